"""A service that publishes ``order.created`` and subscribes to ``payment.settled``, with the
contracts chosen by the environment (for the register, worker start and ``check`` tests):

- ``DECLARED_SCHEMAS``: comma-separated ``version:schema`` pairs of ``order.created``, each
  schema one of ``_contracts.SCHEMAS`` (default ``1:v1``);
- ``DECLARED_COMPATIBILITY``: their compatibility mode (default ``BACKWARD``);
  empty: it declares nothing;
- ``DECLARED_SUBSCRIBES``: its handler's pattern (default ``payment.settled``);
- ``DECLARED_ACCEPTS``: the schema (of ``SCHEMAS``) its handler accepts, if any;
- ``DECLARED_VERSIONS``: comma-separated versions its handler accepts (default: every one);
- ``DECLARED_SERVICE``: its service name (default ``declared``).
"""

import os

from celery import Celery

from celery_events import Event, EventBus

from ._contracts import SCHEMAS
from ._effects import broker_url, record

service = os.environ.get("DECLARED_SERVICE", "declared")
app = Celery(service, broker=broker_url())
bus = EventBus(app, service=service)

for pair in filter(None, os.environ.get("DECLARED_SCHEMAS", "1:v1").split(",")):
    version, _, schema = pair.partition(":")
    bus.declare(
        "order.created",
        schema=SCHEMAS[schema],
        version=int(version),
        compatibility=os.environ.get("DECLARED_COMPATIBILITY", "BACKWARD"),
    )

_accepts = os.environ.get("DECLARED_ACCEPTS")
_versions = [int(v) for v in os.environ.get("DECLARED_VERSIONS", "").split(",") if v]


@bus.subscribe(
    os.environ.get("DECLARED_SUBSCRIBES", "payment.settled"),
    schema=SCHEMAS[_accepts] if _accepts else None,
    versions=_versions or None,
)
def handle(event: Event) -> None:
    record(f"{service}.handle", event)
