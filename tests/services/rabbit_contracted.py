"""A subscriber on RabbitMQ with versioned handlers (tests/integration/amqp/test_contracts.py).

Broker ``CELERY_EVENTS_TEST_BROKER`` (amqp://); registry, state and effects in the Redis of
``CELERY_EVENTS_TEST_STATE``. ``ship`` accepts ``order.created`` v1 only, ``audit`` every
version; each run that took effect is noted in ``test:effects``.
"""

from __future__ import annotations

import json
import os

import redis
from celery import Celery

from celery_events import Event, EventBus

STATE = os.environ["CELERY_EVENTS_TEST_STATE"]

app = Celery("fulfilment", broker=os.environ["CELERY_EVENTS_TEST_BROKER"])
bus = EventBus(app, service="fulfilment", registry_url=STATE, max_retries=1, retry_backoff=0.1)
notes = redis.Redis.from_url(STATE)


def note(handler: str, event: Event) -> None:
    task = app.current_worker_task
    notes.rpush("test:effects", json.dumps({
        "handler": handler, "event_id": event.id, "dataschema": event.dataschema,
        "task_id": task.request.id if task is not None else None,
    }))


@bus.subscribe("order.created", versions=[1])
def ship(event: Event) -> None:
    note("fulfilment.ship", event)


@bus.subscribe("order.created")
def audit(event: Event) -> None:
    note("fulfilment.audit", event)
