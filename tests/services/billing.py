"""A subscriber whose handlers succeed, retry, fail, or wait: what Flower and the CLI show."""

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


def _client() -> redis.Redis:
    return redis.Redis.from_url(broker_url())


@bus.subscribe("order.created")
def charge(event: Event) -> None:
    record("billing.charge", event)


@bus.subscribe("order.cancelled", max_retries=0)
def refund(event: Event) -> None:
    raise RuntimeError(f"order {event.data['order_id']} was never charged")


def _fail_first(handler: str, event: Event) -> None:
    """Fail ``event.data["failures"]`` times, then succeed."""
    attempt = _client().incr(f"test:billing:attempts:{handler}:{event.id}")
    if attempt <= event.data.get("failures", 0):
        raise ConnectionError(f"payment gateway busy (attempt {attempt})")
    record(handler, event)


@bus.subscribe("payment.requested", max_retries=3, retry_backoff=0.1, retry_jitter=False)
def collect(event: Event) -> None:
    _fail_first("billing.collect", event)


# Waits 3 s before its retry, long enough to watch the delivery in its RETRY state.
@bus.subscribe("payment.settled", max_retries=1, retry_backoff=3, retry_jitter=False)
def settle(event: Event) -> None:
    _fail_first("billing.settle", event)


@bus.subscribe("order.shipped")
def wait_for_release(event: Event) -> None:
    _client().blpop([RELEASE_KEY], timeout=30)
    record("billing.wait_for_release", event)
