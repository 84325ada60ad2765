"""On ``sentinel://`` as on ``redis://``: more threads (or coroutines) publishing at once
through one bus than its client keeps connections to the primary (``MAX_CONNECTIONS``), while
the primary holds every write for a moment (``CLIENT PAUSE``): each waits for a free connection
rather than failing ("Too many connections"), so every event is sent at the first try."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

import pytest

from celery_events import EventBus
from celery_events.backends.redis.client import MAX_CONNECTIONS, connect_async

from .conftest import SentinelTopology

THREADS = MAX_CONNECTIONS + 50
EACH = 3
QUEUE = "events.held"


def test_more_threads_than_connections_all_publish_at_the_first_try(
    sentinel_topology: SentinelTopology,
    make_bus: Callable[..., EventBus],
    caplog: pytest.LogCaptureFixture,
) -> None:
    held = make_bus("held")
    held.subscribe("order.placed", name="take")(lambda event: None)
    held.register()
    shop = make_bus()
    shop.registry.refresh()
    primary = sentinel_topology.primary_client()
    start = threading.Barrier(THREADS + 1)
    errors: list[BaseException] = []

    def publish() -> None:
        start.wait()
        try:
            for n in range(EACH):
                shop.publish("order.placed", {"n": n})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with caplog.at_level(logging.WARNING, logger="celery_events"):
        threads = [threading.Thread(target=publish) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        primary.execute_command("CLIENT", "PAUSE", 500, "WRITE")
        start.wait()
        for thread in threads:
            thread.join(timeout=60)
    assert errors == []
    assert primary.llen(QUEUE) == THREADS * EACH
    assert [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()] == []


def test_more_coroutines_than_connections_all_get_one(
    sentinel_topology: SentinelTopology, sentinel_url: str
) -> None:
    from ...sentinel_harness import SENTINEL_OPTIONS

    client = connect_async(sentinel_url, 5.0, transport_options=SENTINEL_OPTIONS)
    primary = sentinel_topology.primary_client()

    async def write_all() -> list[object]:
        try:
            await client.ping()
            primary.execute_command("CLIENT", "PAUSE", 500, "WRITE")
            return await asyncio.gather(
                *(client.set(f"test:held:{n}", n) for n in range(THREADS)), return_exceptions=True
            )
        finally:
            await client.aclose()

    replies = asyncio.run(write_all())
    assert [r for r in replies if r is not True] == []
