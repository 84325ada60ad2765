"""One contract-suite service (``CONTRACT_SERVICE``) as a real worker runs it, on the broker
named by CELERY_EVENTS_TEST_BROKER; ``tests/contract/services.py`` holds its handlers."""

import os

from celery import Celery

from tests.contract.services import RedisBoard, build_service

from ._effects import broker_url

service = os.environ["CONTRACT_SERVICE"]
prefix = os.environ["CONTRACT_KEY_PREFIX"]
app = Celery(service, broker=broker_url())
bus = build_service(
    app,
    service,
    RedisBoard(broker_url(), f"{prefix}board:"),
    key_prefix=prefix,
    queue_template=f"{prefix}events.{{service}}",
)
