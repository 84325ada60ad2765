"""``await bus.apublish`` and ``apublish_many`` on a real Redis with real workers: what
``publish`` promises, from asyncio, without blocking the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from celery_events import (
    EventBus,
    InvalidEventData,
    InvalidEventName,
    Middleware,
    NoSubscribersError,
    PublishError,
)
from celery_events.registry import Subscription

from ..harness import RedisServer, free_port, wait_until
from .conftest import effect_counts

ORDERS = "tests.services.orders"
MAILER = "tests.services.mailer"
AUDIT = Subscription("user.*", "orders", "orders.audit_users", "events.orders")


class LoopLag:
    """Sleeps 1 ms at a time on the loop and keeps the worst lateness seen (seconds)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.ticks = 0

    async def watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, time.perf_counter() - started - 0.001)
            self.ticks += 1


def watched(coroutine: Coroutine[Any, Any, Any]) -> tuple[Any, LoopLag]:
    """Run ``coroutine`` on a new loop with a :class:`LoopLag` beside it."""
    lag = LoopLag()

    async def main() -> Any:
        stop = asyncio.Event()
        watcher = asyncio.create_task(lag.watch(stop))
        try:
            return await coroutine
        finally:
            stop.set()
            await watcher

    return asyncio.run(main()), lag


class Threads(Middleware):
    """Notes the thread each publish scope runs in."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def publish(self, call, call_next):  # type: ignore[no-untyped-def]
        self.threads.append(threading.get_ident())
        return call_next(call)


class ThreadsWithIO(Threads):
    publishes_with_io = True


@pytest.fixture
def registered(redis_url: str) -> Iterator[None]:
    admin = EventBus(Celery("admin", broker=redis_url), service="admin")
    admin.registry.register("orders", [AUDIT])
    yield
    admin.close()


def test_apublished_events_are_handled_exactly_once_by_real_workers(
    start_worker, publisher: EventBus, redis_client: redis.Redis
) -> None:
    # Given two subscriber services running
    start_worker(ORDERS)
    start_worker(MAILER)

    # When 20 coroutines apublish at once, and one apublish_many sends five more events
    async def main() -> tuple[list[Any], list[Any]]:
        single = await asyncio.gather(
            *(publisher.apublish("user.registered", {"user_id": i}) for i in range(20))
        )
        many = await publisher.apublish_many([("user.deleted", {"user_id": i}) for i in range(5)])
        await publisher.aclose()
        return single, many

    single, many = asyncio.run(main())

    # Then each matching handler ran each event exactly once, as with publish
    expected: Counter[tuple[str, str]] = Counter()
    for result in single:
        assert sorted(d.handler for d in result.deliveries) == [
            "mailer.send_welcome",
            "orders.audit_users",
            "orders.welcome_order",
        ]
        for delivery in result.deliveries:
            expected[(delivery.handler, result.event.id)] = 1
    for result in many:
        assert [d.handler for d in result.deliveries] == ["orders.audit_users"]
        expected[("orders.audit_users", result.event.id)] = 1
    wait_until(lambda: sum(effect_counts(redis_client).values()) >= sum(expected.values()))
    assert effect_counts(redis_client) == expected


def test_bad_events_raise_what_publish_raises_and_send_nothing(
    registered: None, publisher: EventBus, redis_client: redis.Redis
) -> None:
    async def attempt(coroutine: Coroutine[Any, Any, Any]) -> BaseException:
        try:
            await coroutine
        except Exception as exc:
            return exc
        raise AssertionError("no error was raised")

    async def main() -> list[BaseException]:
        return [
            await attempt(publisher.apublish("User Registered", {})),
            await attempt(publisher.apublish("user.registered", {"when": object()})),
            await attempt(publisher.apublish("nobody.listens", {}, require_subscribers=True)),
            await attempt(publisher.apublish_many([("user.registered", {}), ("bad name!", {})])),
        ]

    name, data, nobody, many = asyncio.run(main())
    # The same typed errors and messages as from publish
    with pytest.raises(InvalidEventName) as sync_name:
        publisher.publish("User Registered", {})
    assert isinstance(name, InvalidEventName) and str(name) == str(sync_name.value)
    assert isinstance(data, InvalidEventData)
    assert isinstance(nobody, NoSubscribersError) and "nobody.listens" in str(nobody)
    assert isinstance(many, InvalidEventName) and str(many).startswith(
        "Event 1 of the publish_many"
    )
    # And nothing was queued: not even the valid first event of the refused apublish_many
    assert redis_client.llen("events.orders") == 0


def test_an_unreachable_broker_is_a_publish_error_after_publish_timeout_and_the_loop_runs_on(
    registered: None, redis_url: str
) -> None:
    # Given a bus whose registry is reachable but whose broker is not
    dead = f"redis://127.0.0.1:{free_port()}/0"
    bus = EventBus(
        Celery("shop", broker=dead), service="shop", registry_url=redis_url, publish_timeout=1.0
    )
    bus.registry.match("user.registered")  # the registry's view is loaded

    # When it apublishes while a task watches the loop's lag
    async def main() -> tuple[BaseException | None, float]:
        started = time.monotonic()
        try:
            await bus.apublish("user.registered", {"user_id": 1})
        except PublishError as exc:
            return exc, time.monotonic() - started
        return None, time.monotonic() - started

    try:
        (error, took), lag = watched(main())
    finally:
        bus.close()

    # Then it raised publish's error once publish_timeout passed, and the loop never stalled
    assert isinstance(error, PublishError)
    assert "did not take the event within publish_timeout (1 s)" in str(error)
    assert "No delivery was sent" in str(error)
    assert 0.5 <= took < 3  # retried until the next pause would end past the deadline
    assert lag.ticks > 100 and lag.worst < 0.2, lag.worst


def test_a_registry_that_cannot_be_read_is_a_publish_error_raised_from_a_thread(
    redis_url: str,
) -> None:
    # Given a bus whose Redis (broker and registry) is down: its registry view never loaded
    dead = f"redis://127.0.0.1:{free_port()}/0"
    bus = EventBus(Celery("shop", broker=dead), service="shop", publish_timeout=0.5)

    async def main() -> BaseException | None:
        try:
            await bus.apublish("user.registered", {"user_id": 1})
        except PublishError as exc:
            return exc
        return None

    try:
        error, lag = watched(main())
    finally:
        bus.close()
    assert isinstance(error, PublishError)
    assert str(error).startswith("Could not publish 'user.registered': Could not read the")
    assert lag.worst < 0.2, lag.worst


def test_the_publish_path_runs_on_the_loop_unless_it_would_wait_on_io(
    registered: None, redis_url: str
) -> None:
    # Given two buses: one with a plain middleware, one with a middleware that does I/O
    plain, with_io = Threads(), ThreadsWithIO()
    buses = [
        EventBus(Celery("shop", broker=redis_url), service="shop", middleware=[m])
        for m in (plain, with_io)
    ]

    async def main() -> int:
        for bus in buses:
            await bus.apublish("user.registered", {})  # the registry's view is loaded first
            await bus.apublish("user.registered", {})
            await bus.aclose()
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    # Then the first publish matched in a thread (the registry had to be read), the next on
    # the loop; a middleware declaring publishes_with_io always runs in a thread
    assert plain.threads[0] != loop_thread and plain.threads[1] == loop_thread
    assert loop_thread not in with_io.threads


def test_several_event_loops_publish_through_one_bus(
    registered: None, publisher: EventBus, redis_client: redis.Redis
) -> None:
    # Given loops in two threads at once, and then two loops one after the other
    async def burst(count: int) -> int:
        results = await asyncio.gather(
            *(publisher.apublish("user.registered", {"n": i}) for i in range(count))
        )
        return sum(len(r.deliveries) for r in results)

    sent: list[int] = []
    threads = [
        threading.Thread(target=lambda: sent.append(asyncio.run(burst(50)))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    sent.append(asyncio.run(burst(10)))
    sent.append(asyncio.run(burst(10)))

    # Then every loop's publishes were sent, each through its own loop's client
    assert sent == [50, 50, 10, 10]
    assert redis_client.llen("events.orders") == 120


def test_a_cancelled_apublish_leaves_the_loops_connection_usable(
    registered: None, publisher: EventBus, redis_client: redis.Redis
) -> None:
    async def main() -> int:
        tasks = [
            asyncio.create_task(publisher.apublish("user.registered", {"n": i})) for i in range(30)
        ]
        await asyncio.sleep(0)
        for task in tasks[::2]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # The next publishes get their own replies, not a cancelled one's
        after = [await publisher.apublish("user.registered", {"after": i}) for i in range(5)]
        return sum(len(r.deliveries) for r in after)

    assert asyncio.run(main()) == 5
    queued = redis_client.llen("events.orders")
    # Every cancelled publish was sent whole or not at all, as after a lost reply
    assert 5 + 15 <= queued <= 5 + 30


def test_a_redis_that_forgot_the_script_gets_it_again(
    registered: None, publisher: EventBus, redis_client: redis.Redis
) -> None:
    # Given a loop that already published, and then Redis forgets its scripts (a restart)
    async def main() -> list[int]:
        await publisher.apublish("user.registered", {"n": 0})
        redis_client.script_flush()
        # When concurrent publishes meet NOSCRIPT together
        results = await asyncio.gather(
            *(publisher.apublish("user.registered", {"n": i}) for i in range(1, 11))
        )
        return [len(r.deliveries) for r in results]

    # Then the script is loaded again and every one of them is sent, once
    assert asyncio.run(main()) == [1] * 10
    assert redis_client.llen("events.orders") == 11


def test_a_loop_publishes_on_after_redis_restarts(
    registered: None, publisher: EventBus, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    # Given a loop whose connection is open, when Redis restarts (it forgets its scripts and
    # drops every connection) between two publishes
    async def main() -> list[int]:
        before = await publisher.apublish("user.registered", {"n": 1})
        await asyncio.to_thread(redis_server.restart)
        after = await asyncio.gather(
            *(publisher.apublish("user.registered", {"n": i}) for i in range(2, 6))
        )
        return [len(r.deliveries) for r in (before, *after)]

    # Then the next publishes reconnect, load the script again and are sent, once each
    assert asyncio.run(main()) == [1] * 5
    assert redis_client.llen("events.orders") == 5
