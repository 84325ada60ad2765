"""One contract-suite service (``CONTRACT_SERVICE``) as a real worker runs it, on the broker
named by CELERY_EVENTS_TEST_BROKER (with CELERY_EVENTS_TEST_MASTER, its master_name, on a
sentinel:// broker); ``tests/contract/services.py`` holds its handlers, which write on the
Redis of CELERY_EVENTS_TEST_STATE or CONTRACT_BOARD_URL (the broker's by default);
CONTRACT_SETTINGS adds the harness's own settings (JSON).
"""

import json
import os

from celery import Celery

from tests.contract.services import RedisBoard, build_service

from ._effects import broker_url

service = os.environ["CONTRACT_SERVICE"]
prefix = os.environ["CONTRACT_KEY_PREFIX"]
state = (
    os.environ.get("CELERY_EVENTS_TEST_STATE")
    or os.environ.get("CONTRACT_BOARD_URL")
    or broker_url()
)
app = Celery(service, broker=broker_url())
if os.environ.get("CELERY_EVENTS_TEST_MASTER"):
    app.conf.broker_transport_options = {"master_name": os.environ["CELERY_EVENTS_TEST_MASTER"]}
bus = build_service(
    app,
    service,
    RedisBoard(state, f"{prefix}board:"),
    key_prefix=prefix,
    queue_template=f"{prefix}events.{{service}}",
    **json.loads(os.environ.get("CONTRACT_SETTINGS", "{}")),
)
