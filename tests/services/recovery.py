"""A subscriber for the worker-death fault tests, with every recovery setting at its default
(no ``visibility_timeout`` override, default sweep interval, lease and time limit).

The broker is ``CELERY_EVENTS_TEST_BROKER`` (Redis or RabbitMQ); on RabbitMQ the registry,
inbox and effects live in the Redis named by ``CELERY_EVENTS_TEST_STATE``. The handler works
for ``data["work"]`` seconds, then records its effect in one transaction with its inbox record;
it also notes each start at once (``STARTED_KEY``), so a test sees what a worker was running.
Each worker names itself in ``RECOVERY_WORKER``. With ``data["hold"]`` the handler waits for an
item on ``{RELEASE_KEY}:{worker}`` before it records its effect.
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery

from celery_events import Event, EventBus

from ._effects import EFFECTS_KEY, broker_url

STARTED_KEY = "test:recovery:started"
RELEASE_KEY = "test:recovery:release"
WORKER = os.environ.get("RECOVERY_WORKER", "")

app = Celery("recovery", broker=broker_url())
bus = EventBus(app, service="recovery", registry_url=os.environ.get("CELERY_EVENTS_TEST_STATE"))
# Where the test reads what started: the bus's state Redis (the broker when it is Redis, else
# the registry's).
notes = redis.Redis.from_url(
    broker_url()
    if broker_url().startswith(("redis://", "rediss://", "unix://"))
    else os.environ["CELERY_EVENTS_TEST_STATE"]
)


@bus.subscribe("recovery.#")
def work(event: Event) -> None:
    note = {"event_id": event.id, "worker": WORKER, "pid": os.getpid()}
    notes.rpush(STARTED_KEY, json.dumps({**note, "t": time.time()}))
    time.sleep(float(event.data.get("work", 0)))
    if event.data.get("hold"):
        state = redis.Redis.from_url(os.environ.get("CELERY_EVENTS_TEST_STATE") or broker_url())
        # Short waits: a long BLPOP would outlast redis-py's read timeout.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not state.blpop([f"{RELEASE_KEY}:{WORKER}"], 1):
            pass
    bus.redis_effects().rpush(
        EFFECTS_KEY, json.dumps({**note, "handler": "recovery.work", "t": time.time()})
    )
