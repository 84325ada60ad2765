"""Two subscribers whose inboxes and dead letters live in a state store the outage tests stop.

The broker is ``CELERY_EVENTS_TEST_BROKER``. On Redis the state store is another Redis
(``CELERY_EVENTS_TEST_STATE``) brought as ``EventBus(state=...)``, the lost-delivery ledger
staying on the broker; on RabbitMQ it is the ``registry_url`` Redis, as users configure it.
Effects are counted in the Redis of ``CELERY_EVENTS_TEST_EFFECTS``, which the tests never stop.
Each handler works ``data["work"]`` seconds, so the outage falls in the middle of the stream.
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery

from celery_events import Event, EventBus
from celery_events.backends.redis.client import connect, is_redis_url
from celery_events.backends.redis.stores import RedisState

from ._effects import EFFECTS_KEY, broker_url

STATE = os.environ["CELERY_EVENTS_TEST_STATE"]
SETTINGS = {"publish_timeout": 2.0, "state_outage_wait": 20.0}

app = Celery("outage", broker=broker_url())
if is_redis_url(broker_url()):
    bus = EventBus(app, service="outage", state=RedisState(connect(STATE, 2.0), "celery_events:"),
                   **SETTINGS)
else:
    bus = EventBus(app, service="outage", registry_url=STATE, **SETTINGS)
effects = redis.Redis.from_url(os.environ["CELERY_EVENTS_TEST_EFFECTS"])


def _record(handler: str, event: Event) -> None:
    time.sleep(float(event.data.get("work", 0)))
    effects.rpush(EFFECTS_KEY, json.dumps({"handler": handler, "event_id": event.id}))


@bus.subscribe("outage.#")
def first(event: Event) -> None:
    _record("outage.first", event)


@bus.subscribe("outage.*")
def second(event: Event) -> None:
    _record("outage.second", event)
