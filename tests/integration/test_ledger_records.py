"""A ledger entry the sweeper cannot read is kept as a dead letter, and every other lost
delivery is still sent again: one bad entry never stops the sweep."""

from __future__ import annotations

import json

import redis
from celery import Celery

from celery_events import EventBus
from celery_events.deadletters import Reason

from ..harness import wait_until
from .conftest import effect_counts

FLAKY = "tests.services.flaky"
LEDGER = "celery_events:ledger:flaky"
DUE = "celery_events:ledger:flaky:due"

GOOD = {"q": "events.flaky", "m": "{}", "e": "e1", "h": "flaky.work", "r": 0}
UNREADABLE = {
    "not-json": b"\xff\xfe not json",
    "a-list": b"[1, 2, 3]",
    "a-string": b'"events.flaky"',
    "null": b"null",
    "queue-a-number": json.dumps({**GOOD, "q": 7}).encode(),
    "message-an-object": json.dumps({**GOOD, "m": {"body": 1}}).encode(),
    "count-a-string": json.dumps({**GOOD, "r": "0"}).encode(),
    "handler-missing": json.dumps({k: v for k, v in GOOD.items() if k != "h"}).encode(),
    "nested-deep": b"[" * 2000 + b"]" * 2000,
}


def test_unreadable_ledger_entries_become_dead_letters_and_lost_deliveries_are_still_resent(
    start_worker, redis_client: redis.Redis, redis_url: str
) -> None:
    # Given a delivery lost between its queue and a worker, and beside it in the service's
    # ledger, entries that are not what the fan-out writes, all overdue
    start_worker(FLAKY).stop()
    publisher = EventBus(Celery("shop", broker=redis_url), service="shop")
    result = publisher.publish("work.lost", {})
    publisher.close()
    for item in redis_client.lrange("events.flaky", 0, -1):
        if json.loads(item)["headers"]["task"] == "flaky.work":
            redis_client.lrem("events.flaky", 1, item)
    for task_id, raw in UNREADABLE.items():
        redis_client.hset(LEDGER, task_id, raw)
        redis_client.zadd(DUE, {task_id: 0})

    # When the service's worker runs its sweeper
    worker = start_worker(FLAKY)

    # Then the lost delivery is sent again and handled once
    wait_until(lambda: effect_counts(redis_client)[("flaky.work", result.event.id)] == 1, timeout=30)
    # And each unreadable entry left the ledger and is a dead letter holding its raw bytes
    ops = EventBus(Celery("flaky-ops", broker=redis_url), service="flaky")
    try:
        wait_until(lambda: ops.dead_letters.count() == len(UNREADABLE), timeout=30)
        letters = {d.task_id: d for d in ops.dead_letters.list(limit=None)}
        assert set(letters) == set(UNREADABLE)
        for task_id, raw in UNREADABLE.items():
            assert letters[task_id].reason == Reason.UNREADABLE_LEDGER_ENTRY
            assert letters[task_id].raw == raw
        # What could still be read of an entry is kept with it
        assert letters["count-a-string"].handler == "flaky.work"
        assert letters["count-a-string"].queue == "events.flaky"
        assert letters["queue-a-number"].queue is None
    finally:
        ops.close()
    wait_until(lambda: redis_client.hlen(LEDGER) == 0, timeout=30)
    assert "sweep for lost deliveries failed" not in worker.log()
