"""The billing service with signing on: it trusts the keys of CELERY_EVENTS_TEST_TRUSTED_KEYS."""

import os

from celery import Celery

from celery_events import Event, EventBus

from ._effects import broker_url, record

app = Celery("billing", broker=broker_url())
bus = EventBus(
    app,
    service="billing",
    trusted_keys=os.environ["CELERY_EVENTS_TEST_TRUSTED_KEYS"],
    require_signatures=True,
)


@bus.subscribe("order.created")
def charge(event: Event) -> None:
    record("billing.charge", event)
