"""``Middleware.on_settled`` hears how every run of every delivery ended, whatever its path."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

from celery_events import Event, EventBus, Middleware, Reject
from celery_events.backends import memory
from celery_events.middleware import Outcome, Settled
from celery_events.testing import HandlerRunner


class Listener(Middleware):
    def __init__(self) -> None:
        self.heard: list[Settled] = []

    def on_settled(self, settled: Settled) -> None:
        self.heard.append(settled)


@pytest.fixture
def listener() -> Listener:
    return Listener()


@pytest.fixture
def bus(listener: Listener) -> Iterator[EventBus]:
    bus = EventBus(
        Celery("billing", broker="memory://"),
        service="billing",
        middleware=[listener],
        retry_jitter=False,
        retry_backoff=0.01,
        max_retries=1,
    )
    yield bus
    bus.close()
    memory.reset()


def placed() -> Event:
    return Event.create("order.placed", {"order_id": 1}, source="shop")


def test_a_handled_delivery_settles_succeeded_with_its_handler_times(
    bus: EventBus, listener: Listener
) -> None:
    bus.subscribe("order.placed", name="invoice")(lambda event: None)
    event = placed()
    [run] = HandlerRunner().run(bus, event)

    [settled] = listener.heard
    assert (settled.outcome, settled.attempt, settled.handler) == (
        Outcome.SUCCEEDED, 1, "billing.invoice"
    )
    assert settled.event == event and settled.task_id == run.task_id
    assert settled.service == "billing" and settled.queue == "events.billing"
    assert settled.started_at <= settled.handler_started_at <= settled.handler_finished_at  # type: ignore[operator]
    assert settled.handler_finished_at <= settled.finished_at  # type: ignore[operator]
    assert settled.handler_seconds is not None and settled.handler_seconds >= 0
    assert settled.error is None and settled.reason is None


def test_a_retried_then_dead_lettered_delivery_settles_once_per_run(
    bus: EventBus, listener: Listener
) -> None:
    @bus.subscribe("order.placed")
    def charge(event: Event) -> None:
        raise RuntimeError("card declined")

    [run] = HandlerRunner().run(bus, placed())

    assert run.status == "dead_lettered"
    assert [(s.outcome, s.attempt) for s in listener.heard] == [
        (Outcome.RETRIED, 1), (Outcome.DEAD_LETTERED, 2)
    ]
    retried, dead = listener.heard
    assert isinstance(retried.error, RuntimeError) and retried.countdown is not None
    assert dead.reason == "retries_exhausted" and isinstance(dead.error, RuntimeError)


def test_a_duplicate_and_a_rejected_delivery_settle_as_such(
    bus: EventBus, listener: Listener
) -> None:
    bus.subscribe("order.placed", name="note")(lambda event: None)

    @bus.subscribe("order.placed")
    def refuse(event: Event) -> None:
        raise Reject("not for us")

    event = placed()
    runner = HandlerRunner()
    runner.run(bus, event, handlers=["billing.note"])
    runner.run(bus, event, handlers=["billing.note"])
    runner.run(bus, event, handlers=["billing.refuse"])

    assert [s.outcome for s in listener.heard] == [
        Outcome.SUCCEEDED, Outcome.DUPLICATE_SKIPPED, Outcome.DEAD_LETTERED
    ]
    duplicate = listener.heard[1]
    assert duplicate.handler_started_at is None and duplicate.handler_seconds is None
    assert listener.heard[2].reason == "rejected"


def test_a_delivery_refused_before_its_handler_settles_dead_lettered(
    bus: EventBus, listener: Listener
) -> None:
    calls: list[Event] = []
    bus.subscribe("order.placed", schema={"type": "object", "required": ["total"]})(calls.append)

    [run] = HandlerRunner().run(bus, placed())

    assert run.status == "dead_lettered" and calls == []
    [settled] = listener.heard
    assert (settled.outcome, settled.reason) == (Outcome.DEAD_LETTERED, "schema_mismatch")
    assert settled.handler_started_at is None
