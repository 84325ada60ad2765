"""What test handlers do: record their effect in Redis so the test can count it."""

from __future__ import annotations

import json
import os

import redis

from celery_events import Event

EFFECTS_KEY = "test:effects"


def broker_url() -> str:
    return os.environ["CELERY_EVENTS_TEST_BROKER"]


def record(handler: str, event: Event) -> None:
    client = redis.Redis.from_url(broker_url())
    client.rpush(
        EFFECTS_KEY,
        json.dumps(
            {
                "handler": handler,
                "event_id": event.id,
                "name": event.name,
                "data": event.data,
                "source": event.source,
                "correlation_id": event.correlation_id,
                "causation_id": event.causation_id,
            }
        ),
    )
