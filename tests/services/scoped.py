"""A service under publish and subscribe scopes, configured from the environment.

- ``SCOPED_SERVICE``: the service name (default ``ledger``);
- ``SCOPED_PATTERN``: its one handler's pattern (default ``payments.refund.*``);
- ``SCOPED_POLICY=0``: the service has no scopes of its own (a stranger); otherwise
  ``tests.services._scopes.SCOPES``, the policy every well-configured service of the tests shares.
"""

import os

from celery import Celery

from celery_events import Event, EventBus

from ._effects import broker_url, record
from ._scopes import SCOPES

service = os.environ.get("SCOPED_SERVICE", "ledger")
app = Celery(service, broker=broker_url())
bus = EventBus(app, service=service, **({} if os.environ.get("SCOPED_POLICY") == "0" else SCOPES))


@bus.subscribe(os.environ.get("SCOPED_PATTERN", "payments.refund.*"))
def handle(event: Event) -> None:
    record(f"{service}.handle", event)
