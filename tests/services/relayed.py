"""Subscribers on RabbitMQ for tests/integration/amqp/test_relay.py.

``RELAY_SERVICE`` names the service, ``RELAY_HANDLERS`` how many handlers it has (``h0``,
``h1``, ...; 0 makes a worker that only relays), each subscribed to ``fan.#``; each records its
effect in the inbox's transaction (``bus.redis_effects()``), so a duplicate that the inbox
skips leaves no second effect. Broker ``CELERY_EVENTS_TEST_BROKER``, registry, inboxes and
effects in the Redis of ``CELERY_EVENTS_TEST_STATE``.
"""

from __future__ import annotations

import json
import os

from celery import Celery

from celery_events import Event, EventBus

SERVICE = os.environ.get("RELAY_SERVICE", "fan")
HANDLERS = int(os.environ.get("RELAY_HANDLERS", "3"))

app = Celery(SERVICE, broker=os.environ["CELERY_EVENTS_TEST_BROKER"])
bus = EventBus(
    app,
    service=SERVICE,
    registry_url=os.environ["CELERY_EVENTS_TEST_STATE"],
    queue_type=os.environ.get("RABBIT_QUEUE_TYPE", "quorum"),
    max_retries=3,
    retry_backoff=0.1,
    retry_jitter=False,
)


def _handler(name: str) -> None:
    def handle(event: Event) -> None:
        bus.redis_effects().rpush(
            "test:effects",
            json.dumps({"handler": f"{SERVICE}.{name}", "event_id": event.id}),
        )

    handle.__name__ = handle.__qualname__ = name
    bus.subscribe("fan.#", name=name)(handle)


for i in range(HANDLERS):
    _handler(f"h{i}")
