"""A subscriber for the screening tests: its handler records exactly what it received, and a
canary task of the same app records if it ever runs (nothing on an event queue may run it).

``SCREENED_MAX_RETRIES`` (default 0) lets a failing handler give up at once;
``SCREENED_STOCK_TRANSPORT=1`` keeps kombu's own Redis transport (no screening), as a user who
chose another ``broker_transport`` has.
"""

from __future__ import annotations

import json
import os

import redis
from celery import Celery

from celery_events import Event, EventBus

from ..screening_items import CANARY_KEY, RECEIVED_KEY
from ._effects import broker_url

app = Celery("screened", broker=broker_url())
if os.environ.get("SCREENED_STOCK_TRANSPORT") == "1":
    app.conf.broker_transport = "redis"
bus = EventBus(
    app,
    service="screened",
    max_retries=int(os.environ.get("SCREENED_MAX_RETRIES", "0")),
    retry_backoff=0.05,
    retry_backoff_max=0.5,
    max_event_size=64 * 1024,
    max_event_depth=16,
    sweep_interval=0.5,
    handler_time_limit=30,
)
client = redis.Redis.from_url(broker_url())


@bus.subscribe("probe.#")
def probe(event: Event) -> None:
    """Record the event as the handler got it: its id, and the repr of its data (a datetime
    or bytes where JSON was published shows there)."""
    if event.data.get("fail_once") if isinstance(event.data, dict) else False:
        if client.incr(f"test:screened:failed:{event.id}") == 1:
            raise RuntimeError("failing once, to be retried")
    client.rpush(RECEIVED_KEY, json.dumps({"id": event.id, "data": repr(event.data)}))


@app.task(name="screened.canary")
def canary(*args: object, **kwargs: object) -> None:
    client.rpush(CANARY_KEY, repr((args, kwargs)))
