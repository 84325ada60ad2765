"""A subscriber with metrics on, serving them on the port the test names.

Its handlers succeed (``meter.ok`` after holding its process for ``hold`` seconds), fail once and are retried, or reject their delivery (a dead letter), as
each event's name says; ``meter.ok`` publishes a ``meter.followed`` from inside the worker, so
the worker's own processes count publishes too. Each run is recorded in Redis (``test:meter``)
so the test waits on the system, not on the clock.
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery

from celery_events import Event, EventBus, Reject

from ._effects import broker_url

METER_KEY = "test:meter"

app = Celery("metered", broker=broker_url())
bus = EventBus(
    app,
    service="metered",
    metrics=True,
    metrics_port=int(os.environ["CELERY_EVENTS_TEST_METRICS_PORT"]),
    retry_jitter=False,
    retry_backoff=0.05,
    max_retries=2,
)
client = redis.Redis.from_url(broker_url())


def note(handler: str, event: Event, what: str) -> None:
    client.rpush(
        METER_KEY,
        json.dumps({"handler": handler, "event_id": event.id, "what": what, "pid": os.getpid()}),
    )


@bus.subscribe("meter.ok")
def count(event: Event) -> None:
    # Held a moment, so that the next delivery goes to another pool process.
    time.sleep(float(event.data.get("hold", 0)))
    bus.publish("meter.followed", {"after": event.id})
    note("count", event, "ok")


@bus.subscribe("meter.followed")
def follow(event: Event) -> None:
    note("follow", event, "ok")


@bus.subscribe("meter.flaky")
def flaky(event: Event) -> None:
    if client.incr(f"test:meter:failures:{event.id}") == 1:
        note("flaky", event, "failed")
        raise ConnectionError("the ledger is down")
    note("flaky", event, "ok")


@bus.subscribe("meter.doomed")
def doomed(event: Event) -> None:
    note("doomed", event, "rejected")
    raise Reject("the order is cancelled")
