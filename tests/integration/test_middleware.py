"""A user's middleware with a real worker: the publisher's publish scope adds an extension
attribute, the subscriber's handle scope wraps the handler, and its notifications hear of
retries, dead letters, skipped duplicates, redeliveries and the worker starting and stopping."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from celery_events import Event, EventBus, Middleware, PublishCall, PublishRefused, PublishResult
from celery_events.middleware import PublishNext

from ..harness import Worker, wait_until

WATCHED = "tests.services.watched"
WATCH_KEY = "test:watch"  # where the service writes its records


class Stamp(Middleware):
    """Stamps each event with the tenant, and refuses events of the ``secret`` family."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
        self.seen.append(call.event.name)
        if call.event.name.startswith("watch.secret"):
            raise PublishRefused(f"{call.event.name!r} is not for other services.")
        return call_next(call.with_event(call.event.with_extensions(tenant="acme")))


@pytest.fixture
def stamp() -> Stamp:
    return Stamp()


@pytest.fixture
def stamping(redis_url: str, stamp: Stamp) -> Iterator[EventBus]:
    bus = EventBus(Celery("stamping", broker=redis_url), service="stamping", middleware=[stamp])
    yield bus
    bus.close()


@pytest.fixture
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(WATCHED)


def watched(client: redis.Redis, event_id: str | None = None) -> list[dict[str, Any]]:
    records = [json.loads(raw) for raw in client.lrange(WATCH_KEY, 0, -1)]
    return [r for r in records if event_id is None or r.get("event_id") == event_id]


def whats(client: redis.Redis, event_id: str) -> list[str]:
    return [r["what"] for r in watched(client, event_id)]


def test_the_publish_scope_stamps_the_event_and_the_handle_scope_wraps_its_handler(
    worker: Worker, stamping: EventBus, stamp: Stamp, redis_client: redis.Redis
) -> None:
    result = stamping.publish("watch.placed", {"order_id": 1})
    assert result.event.extensions == {"tenant": "acme"} and stamp.seen == ["watch.placed"]
    [delivery] = result.deliveries
    wait_until(lambda: whats(redis_client, result.event.id) == ["enter", "handler", "leave"])
    enter, handler, leave = watched(redis_client, result.event.id)
    assert handler["extensions"] == {"tenant": "acme"}
    assert enter == {
        **leave,
        "what": "enter",
    }
    assert enter["handler"] == delivery.handler == "watched.look"
    assert (enter["queue"], enter["task_id"]) == (delivery.queue, delivery.task_id)
    assert (enter["attempt"], enter["service"]) == (1, "watched")
    assert enter["extensions"] == {"tenant": "acme"}
    assert enter["pid"] == handler["pid"] == leave["pid"]


def test_a_refused_event_is_not_sent(
    worker: Worker, stamping: EventBus, redis_client: redis.Redis
) -> None:
    with pytest.raises(PublishRefused, match="not for other services"):
        stamping.publish("watch.secret.plan", {})
    assert redis_client.llen("events.watched") == 0
    after = stamping.publish("watch.after", {})  # the worker gets what was not refused
    wait_until(lambda: "handler" in whats(redis_client, after.event.id))
    assert [r for r in watched(redis_client) if r["what"] == "handler"] == [
        r for r in watched(redis_client, after.event.id) if r["what"] == "handler"
    ]


def test_a_retry_is_notified_and_the_next_attempt_is_wrapped_again(
    worker: Worker, stamping: EventBus, redis_client: redis.Redis
) -> None:
    result = stamping.publish("watch.flaky", {"fail_once": True})
    event_id = result.event.id
    wait_until(lambda: whats(redis_client, event_id).count("leave") == 2)
    assert whats(redis_client, event_id) == [
        "enter", "handler", "leave", "retry", "enter", "handler", "leave"
    ]
    records = watched(redis_client, event_id)
    retry = records[3]
    assert (retry["error"], retry["attempt"]) == ("RuntimeError", 1)
    assert 0 <= retry["countdown"] <= 0.2
    assert [r["attempt"] for r in records if r["what"] == "enter"] == [1, 2]
    assert len({r["task_id"] for r in records if "task_id" in r}) == 1


def test_a_dead_letter_is_notified_and_its_replay_goes_through_the_publish_scope(
    worker: Worker, stamping: EventBus, redis_client: redis.Redis, redis_url: str
) -> None:
    result = stamping.publish("watch.unwanted", {"reject": True})
    [delivery] = result.deliveries

    def dead() -> list[dict[str, Any]]:
        return [r for r in watched(redis_client) if r["what"] == "dead_letter"]

    [letter] = wait_until(dead)
    assert letter["reason"] == "rejected"
    assert (letter["task_id"], letter["handler"]) == (delivery.task_id, "watched.look")

    class Origins(Middleware):
        def __init__(self) -> None:
            self.calls: list[PublishCall] = []

        def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
            self.calls.append(call)
            return call_next(call)

    origins = Origins()
    ops = EventBus(Celery("watched-ops", broker=redis_url), service="watched", middleware=[origins])
    try:
        [replayed] = ops.dead_letters.replay(delivery.task_id)
    finally:
        ops.close()
    [call] = origins.calls
    assert (call.origin, call.event.id) == ("replay", result.event.id)
    assert call.event.extensions == {"tenant": "acme"}  # kept in the dead letter
    assert [(t.handler, t.queue) for t in call.targets or ()] == [("watched.look", delivery.queue)]
    # The replay is a fresh delivery: rejected again, it is a second dead letter.
    first, second = wait_until(lambda: len(dead()) == 2 and dead())
    assert second["task_id"] != first["task_id"] == delivery.task_id


def test_the_dead_letters_of_the_sweep_and_the_screen_are_notified(
    worker: Worker, redis_client: redis.Redis
) -> None:
    # Given a delivery of the watched service lost max_deliveries times (its ledger entry,
    # overdue), and an item on its queue that is not a message at all
    entry = {"q": "events.watched", "m": "{}", "e": "e-lost", "h": "watched.look", "r": 5}
    redis_client.hset("celery_events:ledger:watched", "t-lost", json.dumps(entry))
    redis_client.zadd("celery_events:ledger:watched:due", {"t-lost": 0})
    redis_client.lpush("events.watched", b"\xff not a message")

    def dead() -> dict[str, dict[str, Any]]:
        return {r["reason"]: r for r in watched(redis_client) if r["what"] == "dead_letter"}

    # When the worker's sweeper gives the delivery up and its screen refuses the item
    # Then the middleware hears of both dead letters
    letters = wait_until(lambda: len(dead()) == 2 and dead(), timeout=30)
    assert set(letters) == {"lost_too_often", "unreadable_message"}
    assert letters["lost_too_often"]["handler"] == "watched.look"


def test_a_duplicate_delivery_is_notified_as_skipped(
    worker: Worker, stamping: EventBus, redis_client: redis.Redis
) -> None:
    event = stamping.new_event("watch.twice", {})
    first = stamping.publish_event(event)
    wait_until(lambda: "leave" in whats(redis_client, event.id))
    second = stamping.publish_event(event)  # the same event again: a new delivery of it
    wait_until(lambda: "duplicate" in whats(redis_client, event.id))
    assert whats(redis_client, event.id) == ["enter", "handler", "leave", "duplicate"]
    duplicate = watched(redis_client, event.id)[-1]
    assert duplicate["task_id"] == second.deliveries[0].task_id != first.deliveries[0].task_id


def test_a_delivery_whose_worker_process_died_is_notified_as_redelivered(
    worker: Worker, stamping: EventBus, redis_client: redis.Redis
) -> None:
    result = stamping.publish("watch.crash", {"crash_once": True})
    event_id = result.event.id
    wait_until(lambda: "leave" in whats(redis_client, event_id), timeout=60)
    # The first run died inside the handler, before it could leave the scope.
    assert whats(redis_client, event_id) == [
        "enter", "handler", "redelivered", "enter", "handler", "leave"
    ]
    first, _, redelivered, again, _, _ = watched(redis_client, event_id)
    assert redelivered["task_id"] == first["task_id"] == again["task_id"]
    assert redelivered["pid"] != first["pid"]
    assert (first["attempt"], again["attempt"]) == (1, 2)


def test_worker_start_and_stop_are_notified(
    start_worker: Callable[..., Worker], redis_client: redis.Redis
) -> None:
    worker = start_worker(WATCHED)

    def lifecycle() -> list[str]:
        return [r["what"] for r in watched(redis_client) if r["what"].startswith("worker_")]

    wait_until(lambda: lifecycle() == ["worker_start"])
    worker.stop()
    assert lifecycle() == ["worker_start", "worker_stop"]


def test_the_publisher_side_runs_for_a_prebuilt_event_too(
    stamping: EventBus, stamp: Stamp, redis_client: redis.Redis
) -> None:
    event = Event.create("watch.nobody", {}, source="stamping")
    result = stamping.publish_event(event)
    assert stamp.seen == ["watch.nobody"] and result.deliveries == ()
    assert result.event.extensions == {"tenant": "acme"} and event.extensions == {}
