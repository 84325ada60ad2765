"""More threads publishing at once through one bus than its Redis client keeps connections
(``MAX_CONNECTIONS``), while Redis holds every write for a moment (``CLIENT PAUSE``, so that
each thread's connection stays in use): each waits for a free connection rather than failing
an attempt ("Too many connections"), so every event is sent on its first try, nothing logged."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from celery_events import EventBus, Subscription
from celery_events.backends.redis.client import MAX_CONNECTIONS

THREADS = MAX_CONNECTIONS + 50
EACH = 5


@pytest.fixture
def bus(redis_url: str) -> Iterator[EventBus]:
    bus = EventBus(Celery("shop", broker=redis_url), service="shop")
    bus.registry.register("orders", [Subscription("order.placed", "orders", "orders.take", "events.orders")])
    yield bus
    bus.close()


def test_more_threads_than_connections_all_publish_at_the_first_try(
    bus: EventBus, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    start = threading.Barrier(THREADS + 1)
    errors: list[BaseException] = []

    def publish() -> None:
        start.wait()
        try:
            for n in range(EACH):
                bus.publish("order.placed", {"n": n})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with caplog.at_level(logging.WARNING, logger="celery_events"):
        threads = [threading.Thread(target=publish) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        redis_client.execute_command("CLIENT", "PAUSE", 500, "WRITE")
        start.wait()
        for thread in threads:
            thread.join(timeout=60)
    assert errors == []
    assert redis_client.llen("events.orders") == THREADS * EACH
    assert [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()] == []
    assert bus.transport.client.connection_pool.max_connections == MAX_CONNECTIONS  # type: ignore[attr-defined]
