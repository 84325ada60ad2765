from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from celery_events import EventBus

from ..services._effects import EFFECTS_KEY


@pytest.fixture
def publisher(redis_url: str) -> Iterator[EventBus]:
    """The `shop` service's bus, as a web process would hold it."""
    bus = EventBus(Celery("shop", broker=redis_url), service="shop")
    yield bus
    bus.close()


def effects(client: redis.Redis) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in client.lrange(EFFECTS_KEY, 0, -1)]


def effect_counts(client: redis.Redis) -> Counter[tuple[str, str]]:
    return Counter((str(e["handler"]), str(e["event_id"])) for e in effects(client))
