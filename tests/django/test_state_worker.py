"""A Django project's worker with ``CELERY_EVENTS["state"] = "database"``: a real `celery
worker` on a real Redis broker, its inbox, leases and dead letters in a real PostgreSQL."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from celery import Celery
from django.test import override_settings

from celery_events import EventBus
from celery_events.contrib.django.models import DeadLetterRecord, DeliveryLease, DeliveryRecord
from celery_events.contrib.django.state import ALIVE_TTL, DatabaseState

from ..harness import Worker, wait_until
from ..integration.conftest import effect_counts
from .conftest import BOTH
from .settings import CELERY_EVENTS

pytestmark = [
    pytest.mark.django_db(transaction=True, databases=BOTH),
    pytest.mark.integration,
]

PACK = "warehouse.pack"


@pytest.fixture(autouse=True)
def state_in_postgres() -> Iterator[None]:
    with override_settings(CELERY_EVENTS={**CELERY_EVENTS, "database": "pg", "state": "database"}):
        yield


@pytest.fixture
def worker(start_django_worker: Callable[..., Worker]) -> Worker:
    return start_django_worker(env={"CELERY_EVENTS_TEST_STATE": "database"})


@pytest.fixture
def shop(redis_url: str) -> Iterator[EventBus]:
    bus = EventBus(Celery("shop", broker=redis_url), service="shop")
    yield bus
    bus.close()


@pytest.fixture
def ops(redis_url: str) -> Iterator[EventBus]:
    """An operator's bus of the warehouse service, on the same database state store."""
    bus = EventBus(Celery("warehouse-ops", broker=redis_url), service="warehouse",
                   state=DatabaseState("pg"))
    yield bus
    bus.close()


def packed(client: redis.Redis, event_id: str) -> int:
    return effect_counts(client)[(PACK, event_id)]


def started(client: redis.Redis, event_id: str) -> list[int]:
    return [int(pid) for pid in client.lrange(f"test:started:{event_id}", 0, -1)]


def test_a_delivery_runs_once_with_the_database_inbox_and_a_duplicate_is_skipped(
    worker: Worker, shop: EventBus, redis_client: redis.Redis
) -> None:
    event = shop.new_event("crate.packed", {"crate": 1})
    shop.publish_event(event)
    wait_until(lambda: packed(redis_client, event.id) == 1)
    # The inbox record is in the database, not in Redis; the delivery's bookkeeping is gone
    wait_until(lambda: DeliveryLease.objects.using("pg").filter(
        handler=PACK, event_id=event.id, state="done").exists())
    assert not redis_client.keys("celery_events:inbox:*")
    # The publisher's fan-out recorded it in the ledger; handling it cleared the entry
    wait_until(lambda: redis_client.hlen("celery_events:ledger:warehouse") == 0)
    assert redis_client.zcard("celery_events:ledger:warehouse:due") == 0
    wait_until(lambda: not DeliveryRecord.objects.using("pg").exists())
    # When the same event arrives again, the handler is not run again
    shop.publish_event(event)
    wait_until(lambda: "already handled event" in worker.log())
    later = shop.publish("crate.packed", {"crate": 2})  # queued behind the duplicate
    wait_until(lambda: packed(redis_client, later.event.id) == 1)
    assert packed(redis_client, event.id) == 1 and len(started(redis_client, event.id)) == 1


def test_retries_end_in_a_dead_letter_in_the_database_which_is_replayed(
    worker: Worker, shop: EventBus, ops: EventBus, redis_client: redis.Redis
) -> None:
    event = shop.new_event("crate.packed", {"crate": 3})
    redis_client.set(f"test:fail:{event.id}", 1)
    shop.publish_event(event)
    # Three attempts (max_retries=2), then a dead letter, kept in PostgreSQL
    wait_until(lambda: ops.dead_letters.count(handler=PACK) == 1, timeout=30)
    assert len(started(redis_client, event.id)) == 3
    [letter] = ops.dead_letters.list(handler=PACK)
    assert letter.reason == "retries_exhausted" and letter.attempts == 3
    assert letter.event_id == event.id and letter.error_type == "RuntimeError"
    assert DeadLetterRecord.objects.using("pg").filter(service="warehouse").count() == 1
    assert not redis_client.keys("celery_events:dead:*")
    # Once the cause is gone, a replay delivers it and the record leaves the store
    redis_client.delete(f"test:fail:{event.id}")
    ops.dead_letters.replay(letter.id)
    wait_until(lambda: packed(redis_client, event.id) == 1, timeout=30)
    assert ops.dead_letters.count() == 0


def test_a_worker_killed_mid_handler_has_its_lease_taken_over_by_the_redelivered_copy(
    worker: Worker, shop: EventBus, redis_client: redis.Redis
) -> None:
    result = shop.publish("crate.packed", {"crate": 4, "sleep": 3})
    [pid] = wait_until(lambda: started(redis_client, result.event.id))
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    # The redelivered copy waits while the dead process's row could still be alive, then
    # takes the lease over and runs; the effect happens once
    wait_until(lambda: packed(redis_client, result.event.id) == 1, timeout=45)
    took = time.monotonic() - killed_at
    assert ALIVE_TTL - 3 <= took <= ALIVE_TTL + 15, took
    runs = started(redis_client, result.event.id)
    assert len(runs) == 2 and runs[1] != pid
    assert "is running; checking again" in worker.log()
    assert worker.process.poll() is None


def test_a_poison_message_that_kills_its_worker_is_dead_lettered_by_its_start_count(
    worker: Worker, shop: EventBus, ops: EventBus, redis_client: redis.Redis
) -> None:
    result = shop.publish("crate.packed", {"crate": 5, "crash": True})
    # max_deliveries is 2 in this project: the third start is refused
    wait_until(lambda: ops.dead_letters.count(handler=PACK) == 1, timeout=90)
    [letter] = ops.dead_letters.list(handler=PACK)
    assert letter.reason == "too_many_deliveries" and letter.error_type == "PoisonMessageError"
    assert letter.attempts == 2 and letter.event_id == result.event.id
    assert len(started(redis_client, result.event.id)) == 2
    # The worker lives on and handles the next crate
    after = shop.publish("crate.packed", {"crate": 6})
    wait_until(lambda: packed(redis_client, after.event.id) == 1, timeout=30)
    assert worker.process.poll() is None
