"""A subscriber whose handlers succeed, fail, or wait: what Flower and the CLI show."""

import os

import redis
from celery import Celery

from celery_events import Event, EventBus

from ._effects import broker_url, record

app = Celery("billing", broker=broker_url())
# BILLING_TASK_EVENTS=0 starts it with the task_events setting off.
bus = EventBus(app, service="billing", task_events=os.environ.get("BILLING_TASK_EVENTS") != "0")

#: A test pushes to this list to let ``wait_for_release`` finish.
RELEASE_KEY = "test:billing:release"


@bus.subscribe("order.created")
def charge(event: Event) -> None:
    record("billing.charge", event)


@bus.subscribe("order.cancelled")
def refund(event: Event) -> None:
    raise RuntimeError(f"order {event.data['order_id']} was never charged")


@bus.subscribe("order.shipped")
def wait_for_release(event: Event) -> None:
    redis.Redis.from_url(broker_url()).blpop([RELEASE_KEY], timeout=30)
    record("billing.wait_for_release", event)
