"""A subscriber whose handlers fail, retry, reject, hang or crash as each event's data says.

Effects are recorded with ``bus.redis_effects()``, so they commit with the inbox record and
count exactly once per handled delivery.
"""

from __future__ import annotations

import json
import os
import signal
import time

import redis
from celery import Celery

from celery_events import Event, EventBus, Reject, Retry

from ._effects import EFFECTS_KEY, broker_url

app = Celery("flaky", broker=broker_url())
bus = EventBus(
    app,
    service="flaky",
    max_retries=3,
    retry_backoff=0.05,
    retry_backoff_max=0.5,
    max_deliveries=3,
    redelivery_timeout=2.0,
    sweep_interval=0.5,
    handler_time_limit=30,
)
client = redis.Redis.from_url(broker_url())


def _record(handler: str, event: Event) -> None:
    task = app.current_worker_task
    bus.redis_effects().rpush(
        EFFECTS_KEY,
        json.dumps(
            {
                "handler": handler,
                "event_id": event.id,
                "name": event.name,
                "data": event.data,
                "retries": task.request.retries if task else None,
                "pid": os.getpid(),
            }
        ),
    )


@bus.subscribe("work.#")
def work(event: Event) -> None:
    data = event.data
    client.rpush(f"test:started:{event.id}", os.getpid())
    if data.get("sleep"):
        time.sleep(float(data["sleep"]))
    if data.get("crash"):
        os.kill(os.getpid(), signal.SIGKILL)
    if data.get("reject"):
        raise Reject("the order is cancelled")
    if data.get("retry_delay") is not None:
        if client.incr(f"test:asked:{event.id}") == 1:
            raise Retry(delay=float(data["retry_delay"]))
    if data.get("fail_times"):
        failures = client.incr(f"test:failures:{event.id}")
        if failures <= int(data["fail_times"]):
            raise ConnectionError(f"the payment gateway is down (failure {failures})")
    if data.get("broken") and client.get(f"test:broken:{event.id}"):
        raise ValueError("the handler is broken for this event")
    if data.get("bad_key"):
        raise KeyError("missing")
    _record("flaky.work", event)


@bus.subscribe("work.#", inbox=False, name="work_no_inbox", dont_retry_for=(KeyError,))
def work_without_inbox(event: Event) -> None:
    if event.data.get("bad_key"):
        raise KeyError("missing")
    if event.data.get("also_no_inbox"):
        client.rpush(EFFECTS_KEY, json.dumps({"handler": "flaky.work_no_inbox", "event_id": event.id}))


# More retries than Celery's own default limit of 3, which must not cut them short.
@bus.subscribe("persist.#", max_retries=5)
def persist(event: Event) -> None:
    client.rpush(f"test:started:{event.id}", os.getpid())
    raise ConnectionError("the archive is down")
