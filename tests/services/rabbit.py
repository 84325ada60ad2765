"""Subscribers on RabbitMQ for tests/integration/amqp/.

The broker is ``CELERY_EVENTS_TEST_BROKER`` (an amqp:// URL); registry, inboxes, dead letters
and the effects live in the Redis of ``CELERY_EVENTS_TEST_STATE``. ``RABBIT_QUEUE_TYPE`` picks
quorum (default) or classic queues, ``RABBIT_SERVICE`` the service name (two services share
these handlers). Every run of a handler notes where its message came from (exchange, routing
key, task id, attempt) in ``test:runs``; a handler that took effect notes it in
``test:effects``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import redis
from celery import Celery

from celery_events import Event, EventBus, Retry

SERVICE = os.environ.get("RABBIT_SERVICE", "rabbit")
STATE = os.environ["CELERY_EVENTS_TEST_STATE"]

app = Celery(SERVICE, broker=os.environ["CELERY_EVENTS_TEST_BROKER"])
bus = EventBus(
    app,
    service=SERVICE,
    registry_url=STATE,
    queue_type=os.environ.get("RABBIT_QUEUE_TYPE", "quorum"),
    max_retries=3,
    retry_backoff=0.1,
    retry_backoff_max=float(os.environ.get("RABBIT_BACKOFF_MAX", "5")),
    retry_jitter=False,
    max_deliveries=2,
    # RABBIT_KEYS: a directory of {key_id}.aes files (tests/integration/amqp/test_sensitive.py).
    encryption_keys=os.environ.get("RABBIT_KEYS") or None,
    # RABBIT_TRUSTED: a trusted_keys directory (signed events, tests/integration/amqp/test_signing.py).
    **({"trusted_keys": os.environ["RABBIT_TRUSTED"]} if os.environ.get("RABBIT_TRUSTED") else {}),
)
notes = redis.Redis.from_url(STATE)


def note(key: str, handler: str, event: Event, **extra: object) -> None:
    task = app.current_worker_task
    request = task.request if task is not None else None
    info = (request.delivery_info or {}) if request is not None else {}
    notes.rpush(
        key,
        json.dumps(
            {
                "service": SERVICE,
                "handler": handler,
                "event_id": event.id,
                "task_id": request.id if request is not None else None,
                "retries": request.retries if request is not None else None,
                "exchange": info.get("exchange"),
                "routing_key": info.get("routing_key"),
                "t": time.time(),
                **extra,
            }
        ),
    )


@bus.subscribe("shop.#")
def seen(event: Event) -> None:
    note("test:runs", f"{SERVICE}.seen", event)
    fails = int(event.data.get("fail", 0))
    if fails and notes.incr(f"test:fails:{SERVICE}:{event.id}") <= fails:
        raise ConnectionError("deliberate transient failure")
    if event.data.get("later") and notes.set(f"test:later:{SERVICE}:{event.id}", 1, nx=True):
        raise Retry(delay=float(event.data["later"]))
    if event.data.get("poison"):
        os._exit(1)  # the pool process dies mid-handler, every time
    # What the handler got of a sensitive field, as a digest (never the value itself).
    got = {"email": hashlib.sha256(event.data["email"].encode()).hexdigest()} if (
        "email" in event.data
    ) else {}
    note("test:effects", f"{SERVICE}.seen", event, **got)


@bus.subscribe("shop.order.*")
def orders(event: Event) -> None:
    note("test:effects", f"{SERVICE}.orders", event)
