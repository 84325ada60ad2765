"""A state store that is away never acks a delivery unhandled (in-process worker, memory://).

The store here is the memory backend's behind a wrapper that fails the calls a test names,
before or after they took effect (a reply lost): what a Redis or a database going away does.
The real servers are stopped in tests/integration/test_state_outage.py and
tests/django/test_state_outage.py.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from celery_events import Event, EventBus
from celery_events.backends import memory
from celery_events.backends.base import StateStore, StoreUnavailable

from ..harness import wait_until


@pytest.fixture(autouse=True)
def _fresh_memory() -> Iterator[None]:
    memory.reset()
    yield
    memory.reset()


class Outage:
    """For how many seconds (from now) each named method fails, and whether its calls take
    effect before they fail (their reply lost)."""

    def __init__(self, **seconds: float) -> None:
        now = time.monotonic()
        self.until = {method: now + s for method, s in seconds.items()}
        self.lost_replies: set[str] = set()
        self.failed: Counter[str] = Counter()

    def call(self, method: str, run: Any) -> Any:
        if time.monotonic() < self.until.get(method, 0.0):
            self.failed[method] += 1
            if method in self.lost_replies:
                run()
            raise StoreUnavailable("Connection refused")
        return run()


class FlakyInbox:
    def __init__(self, inner: Any, outage: Outage) -> None:
        self.inner = inner
        self.outage = outage

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        return lambda *a, **k: self.outage.call(name, lambda: method(*a, **k))


class FlakyState:
    def __init__(self, inner: StateStore, outage: Outage) -> None:
        self.inner = inner
        self.outage = outage

    def inbox(self, service: str) -> Any:
        return FlakyInbox(self.inner.inbox(service), self.outage)

    def dead_letters(self, service: str) -> Any:
        return FlakyInbox(self.inner.dead_letters(service), self.outage)

    def dead_letter_services(self) -> list[str]:
        return self.inner.dead_letter_services()

    def close(self) -> None:
        self.inner.close()


def make_bus(outage: Outage, **settings: Any) -> EventBus:
    # The memory space's own store, as another bus of the process sees it.
    inner = EventBus(Celery("store", broker="memory://", set_as_current=False), service="store")
    app = Celery("shop", broker="memory://", set_as_current=False)
    app.conf.broker_transport_options = {"polling_interval": 0.01}
    bus = EventBus(app, service="shop", state=FlakyState(inner.backend.state, outage),
                   state_outage_wait=0.05, **settings)
    return bus


def run_worker(bus: EventBus, until: Any, what: str) -> None:
    bus.register()
    for queue in bus.queues:
        bus.app.amqp.queues.select_add(queue)
    with start_worker(bus.app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
        bus.publish("order.created", {"id": 1})
        wait_until(until, timeout=20, what=what)


def test_claims_that_fail_past_the_wait_hand_the_delivery_back_without_counting_a_failure() -> None:
    # Given no retries at all, and a store whose claims fail for longer than a run waits
    outage = Outage(claim=1.0)
    bus = make_bus(outage, max_retries=0)
    seen: list[Event] = []
    bus.subscribe("order.*")(seen.append)
    # When the delivery arrives, then it runs once the store is back: not dead-lettered
    run_worker(bus, lambda: seen, "the handler")
    assert len(seen) == 1
    assert bus.dead_letters.count() == 0
    assert bus.inbox.claim("shop.append", seen[0].id, "x", event_time=seen[0].time.timestamp(),
                           lease="{}", lease_seconds=1, use_inbox=True).status == "done"


def test_a_claim_whose_reply_was_lost_counts_one_start_and_its_lease_is_not_waited_out() -> None:
    # Given max_deliveries=1 (a second start would be a poison message) and a claim that took
    # effect each time but whose replies were lost until the run gave up waiting
    outage = Outage(claim=0.5)
    outage.lost_replies.add("claim")
    bus = make_bus(outage, max_deliveries=1)
    seen: list[Event] = []
    bus.subscribe("order.*")(seen.append)
    # Then the next run releases the lease this process left, and the handler runs once
    run_worker(bus, lambda: seen, "the handler")
    assert len(seen) == 1
    assert bus.dead_letters.count() == 0


def test_a_success_that_cannot_be_written_at_once_is_waited_for_and_the_handler_runs_once() -> None:
    outage = Outage(succeed=0.5)
    bus = make_bus(outage)
    seen: list[Event] = []
    bus.subscribe("order.*")(seen.append)
    run_worker(bus, lambda: seen and bus.inbox.is_done(
        "shop.append", seen[0].id, event_time=seen[0].time.timestamp()
    ), "success")
    assert len(seen) == 1 and outage.failed["succeed"] > 1


def test_a_dead_letter_that_cannot_be_written_is_not_acked_and_is_kept_once_the_store_is_back() -> None:
    # Given a handler that always fails, no retries, and dead-letter writes failing for a run
    outage = Outage(add=0.3)
    bus = make_bus(outage, max_retries=0)
    runs: list[Event] = []

    @bus.subscribe("order.*")
    def fail(event: Event) -> None:
        runs.append(event)
        raise RuntimeError("card declined")

    run_worker(bus, lambda: bus.dead_letters.count() == 1, "a dead letter")
    (letter,) = bus.dead_letters.list()
    # The run whose dead letter was not kept counted nothing: the next one failed as the first
    assert (letter.reason, letter.attempts) == ("retries_exhausted", 1)
    assert len(runs) >= 2 and outage.failed["add"] >= 1
