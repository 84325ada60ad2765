"""More threads (or coroutines) publishing at once through one bus than its Redis client keeps connections
(``MAX_CONNECTIONS``), while Redis holds every write for a moment (``CLIENT PAUSE``, so that
each thread's connection stays in use): each waits for a free connection rather than failing
an attempt ("Too many connections"), so every event is sent on its first try, nothing logged."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from celery_events import EventBus, Subscription
from celery_events.backends.redis.client import MAX_CONNECTIONS, connect_async

THREADS = MAX_CONNECTIONS + 50
EACH = 5


@pytest.fixture
def bus(redis_url: str) -> Iterator[EventBus]:
    bus = EventBus(Celery("shop", broker=redis_url), service="shop")
    bus.registry.register(
        "orders", [Subscription("order.placed", "orders", "orders.take", "events.orders")]
    )
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


def test_more_coroutines_than_connections_all_get_one(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # The asyncio client (apublish's, one per loop), with every write held for a moment.
    client = connect_async(redis_url, 5.0)

    async def write_all() -> list[object]:
        try:
            await client.ping()
            redis_client.execute_command("CLIENT", "PAUSE", 500, "WRITE")
            return await asyncio.gather(
                *(client.set(f"test:held:{n}", n) for n in range(THREADS)), return_exceptions=True
            )
        finally:
            await client.aclose()

    replies = asyncio.run(write_all())
    assert [r for r in replies if r is not True] == []
