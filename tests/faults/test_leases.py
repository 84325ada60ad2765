"""Inbox leases follow their holder's alive key, not a pid on one host.

A copy of a delivery that finds another copy's lease runs at once when the holder's process is
gone, whichever host it ran on, and waits (no second effect) while the holder is alive. A holder
presumed dead that comes back (a frozen host) finds its lease taken and applies no effect.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable

import redis
from celery import Celery

from celery_events import EventBus

from ..harness import Worker, wait_until

PREFIX = "celery_events:"
# tests.services.recovery's keys (importing that module would build its app).
STARTED_KEY = "test:recovery:started"
RELEASE_KEY = "test:recovery:release"


def _effects(client: redis.Redis) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in client.lrange("test:effects", 0, -1)]


def _publish_with_lease(redis_url: str, client: redis.Redis, holder: dict[str, object]) -> str:
    """Publish one event to the recovery service, whose lease ``holder`` already holds."""
    publisher = EventBus(Celery("lease_pub", broker=redis_url), service="lease_pub")
    try:
        result = publisher.publish("recovery.job", {"work": 0})
    finally:
        publisher.close()
    client.set(
        f"{PREFIX}inbox:recovery.work:{result.event.id}", json.dumps(holder), px=330_000
    )
    return result.event.id


def _subscribe(start_worker: Callable[..., Worker]) -> None:
    """Record the service's subscription (its worker does on start), then stop that worker."""
    worker = start_worker("tests.services.recovery", env={"RECOVERY_WORKER": "setup"})
    worker.stop()


def test_a_lease_held_by_a_dead_process_on_another_host_is_taken_over_at_once(
    start_worker: Callable[..., Worker], redis_url: str, redis_client: redis.Redis
) -> None:
    # Given a delivery whose lease names a process of another host, which has no alive key
    _subscribe(start_worker)
    event_id = _publish_with_lease(
        redis_url,
        redis_client,
        {"task": "earlier-copy", "process": "0" * 32, "host": "host-b", "pid": 4242},
    )
    # When a worker takes the delivery
    started = time.monotonic()
    start_worker("tests.services.recovery", env={"RECOVERY_WORKER": "a@host-a"})
    # Then it runs at once, once
    wait_until(lambda: _effects(redis_client), timeout=10, what="the delivery's effect")
    assert time.monotonic() - started < 10
    assert [e["event_id"] for e in _effects(redis_client)] == [event_id]


def test_a_lease_whose_holder_is_alive_waits_and_is_taken_over_when_it_dies(
    start_worker: Callable[..., Worker], redis_url: str, redis_client: redis.Redis
) -> None:
    # Given a delivery whose lease names a live process (its alive key is renewed here)
    _subscribe(start_worker)
    token = "1" * 32
    alive = f"{PREFIX}alive:{token}"
    redis_client.set(alive, "{}", px=12_000)  # as its holder renews it
    event_id = _publish_with_lease(
        redis_url, redis_client, {"task": "earlier-copy", "process": token, "host": "host-b",
                                  "pid": 4242},
    )
    worker = start_worker("tests.services.recovery", env={"RECOVERY_WORKER": "a@host-a"})
    # When the worker takes the delivery, it waits for the holder
    wait_until(lambda: "is running; checking again" in worker.log(), timeout=15,
               what="the copy to find the lease busy")
    assert redis_client.llen(STARTED_KEY) == 0
    assert _effects(redis_client) == []
    # And when the holder dies (its alive key is gone), the delivery runs once
    redis_client.delete(alive)
    wait_until(lambda: _effects(redis_client), timeout=20, what="the delivery's effect")
    assert [e["event_id"] for e in _effects(redis_client)] == [event_id]
    assert redis_client.llen(STARTED_KEY) == 1


def test_a_frozen_worker_that_comes_back_after_its_delivery_was_taken_over_applies_no_effect(
    start_worker: Callable[..., Worker], redis_url: str, redis_client: redis.Redis
) -> None:
    # Given worker A running a delivery's handler (it waits to be released)
    _subscribe(start_worker)
    a = start_worker("tests.services.recovery", env={"RECOVERY_WORKER": "a@host-a"},
                     args=["-n", "a@host-a"])
    publisher = EventBus(Celery("lease_pub", broker=redis_url), service="lease_pub")
    event_id = publisher.publish("recovery.job", {"hold": True}).event.id
    publisher.close()
    wait_until(lambda: redis_client.llen(STARTED_KEY) == 1, timeout=15, what="A to start it")
    # When A's host freezes (every process of it stops, so its alive keys expire)
    os.killpg(a.process.pid, signal.SIGSTOP)
    try:
        # Then worker B gets A's message back and takes the lease over
        start_worker("tests.services.recovery", env={"RECOVERY_WORKER": "b@host-b"},
                     args=["-n", "b@host-b"])
        wait_until(lambda: redis_client.llen(STARTED_KEY) == 2, timeout=40,
                   what="B to run the delivery A held")
        redis_client.rpush(f"{RELEASE_KEY}:b@host-b", "go")
        wait_until(lambda: _effects(redis_client), timeout=15, what="B's effect")
    finally:
        # And when A comes back and finishes too, its effect is dropped, not applied twice
        os.killpg(a.process.pid, signal.SIGCONT)
    redis_client.rpush(f"{RELEASE_KEY}:a@host-a", "go")
    wait_until(lambda: " succeeded in " in a.log(), timeout=20, what="A's run to end")
    assert [(e["event_id"], e["worker"]) for e in _effects(redis_client)] == [
        (event_id, "b@host-b")
    ]
    assert "took its lease over" in a.log()
