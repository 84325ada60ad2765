"""HandlerRunner makes the worker's decisions in-process: envelope, inbox, retries."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest
from celery import Celery

from celery_events import ConfigurationError, Event, EventBus, InvalidEventData, Reject, Retry
from celery_events.backends import memory
from celery_events.testing import HandlerRunner

# The memory backend: deliveries run in this process, through the real delivery task.
MEMORY = "memory://"


@pytest.fixture
def bus() -> Iterator[EventBus]:
    bus = EventBus(Celery("billing", broker=MEMORY), service="billing", retry_jitter=False)
    yield bus
    bus.close()
    memory.reset()


def placed(**data: object) -> Event:
    return Event.create("order.placed", {"order_id": 1, **data}, source="shop")


def test_every_matching_handler_runs_once_with_the_decoded_envelope(bus: EventBus) -> None:
    seen: list[tuple[str, Event]] = []

    @bus.subscribe("order.placed")
    def invoice(event: Event) -> None:
        seen.append(("invoice", event))

    @bus.subscribe("order.#")
    def audit(event: Event) -> None:
        seen.append(("audit", event))

    @bus.subscribe("user.*")
    def unrelated(event: Event) -> None:
        seen.append(("unrelated", event))

    event = Event.create("order.placed", {"lines": [{"sku": "a"}]}, source="shop")
    runs = HandlerRunner().run(bus, event)
    assert [(r.handler, r.status, r.attempts) for r in runs] == [
        ("billing.invoice", "succeeded", 1), ("billing.audit", "succeeded", 1),
    ]
    assert [name for name, _ in seen] == ["invoice", "audit"]
    received = seen[0][1]
    assert received == event and received is not event  # decoded from JSON, like a worker
    assert isinstance(received.time, datetime)
    only = HandlerRunner().run(bus, event, handlers=["billing.audit"])
    assert [r.handler for r in only] == ["billing.audit"]


def test_the_inbox_skips_a_delivery_that_already_succeeded(bus: EventBus) -> None:
    calls: list[str] = []

    @bus.subscribe("order.placed")
    def invoice(event: Event) -> None:
        calls.append("invoice")

    @bus.subscribe("order.placed", inbox=False)
    def notify(event: Event) -> None:
        calls.append("notify")

    runner = HandlerRunner()
    event = placed()
    runner.run(bus, event)
    again = runner.run(bus, event)
    assert [(r.handler, r.status) for r in again] == [
        ("billing.invoice", "skipped"), ("billing.notify", "succeeded"),
    ]
    assert calls == ["invoice", "notify", "notify"]
    # Another event is not skipped
    assert runner.run(bus, placed())[0].status == "succeeded"


def test_a_failing_handler_is_retried_with_the_workers_backoff(bus: EventBus) -> None:
    failures = iter([ConnectionError("down"), TimeoutError("slow")])

    @bus.subscribe("order.placed", max_retries=3, retry_backoff=2)
    def charge(event: Event) -> None:
        error = next(failures, None)
        if error is not None:
            raise error

    [run] = HandlerRunner().run(bus, placed())
    assert (run.status, run.attempts, run.retry_delays) == ("succeeded", 3, (2.0, 4.0))


def test_a_handler_that_keeps_failing_is_dead_lettered_when_retries_run_out(
    bus: EventBus,
) -> None:
    @bus.subscribe("order.placed", max_retries=2, retry_backoff=1)
    def charge(event: Event) -> None:
        raise ConnectionError("gateway down")

    [run] = HandlerRunner().run(bus, placed())
    assert (run.status, run.reason, run.attempts) == ("dead_lettered", "retries_exhausted", 3)
    assert isinstance(run.error, ConnectionError) and not run.ok
    [first] = HandlerRunner(run_retries=False).run(bus, placed())
    assert (first.status, first.attempts, first.retry_delays) == ("retrying", 1, (1.0,))


def test_reject_retry_and_dont_retry_for_steer_the_delivery(bus: EventBus) -> None:
    @bus.subscribe("order.placed", dont_retry_for=(KeyError,))
    def validate(event: Event) -> None:
        if event.data.get("reject"):
            raise Reject("amount must be positive")
        if event.data.get("wait"):
            raise Retry(delay=5)
        event.data["missing"]

    runner = HandlerRunner(run_retries=False)
    [rejected] = runner.run(bus, placed(reject=True))
    assert (rejected.status, rejected.reason, rejected.attempts) == ("dead_lettered", "rejected", 1)
    [waiting] = runner.run(bus, placed(wait=True))
    assert (waiting.status, waiting.retry_delays) == ("retrying", (5.0,))
    [not_retried] = runner.run(bus, placed())
    assert (not_retried.status, not_retried.reason) == ("dead_lettered", "not_retried")


def test_a_retry_asked_for_then_a_success_keeps_the_retry_as_the_last_error(bus: EventBus) -> None:
    runs = []

    @bus.subscribe("order.placed")
    def settle(event: Event) -> None:
        runs.append(event.id)
        if len(runs) == 1:
            raise Retry(0, "the ledger is closing")

    [run] = HandlerRunner().run(bus, placed())
    assert (run.status, run.attempts) == ("succeeded", 2)
    # The handler's own Retry, not Celery's stand-in for an exception it could not pickle
    assert type(run.error) is Retry
    assert (run.error.delay, run.error.reason) == (0, "the ledger is closing")


def test_an_invalid_envelope_is_dead_lettered_as_on_a_worker(bus: EventBus) -> None:
    @bus.subscribe("order.placed")
    def invoice(event: Event) -> None:
        raise AssertionError("must not run")

    envelope = placed().to_envelope()
    envelope["specversion"] = "0.3"
    [run] = HandlerRunner().run(bus, envelope)
    assert (run.status, run.reason, run.attempts) == ("dead_lettered", "invalid_envelope", 0)


def test_an_atomic_handler_needs_a_transaction_runner(bus: EventBus) -> None:
    @bus.subscribe("order.placed", atomic=True)
    def book(event: Event) -> None: ...

    with pytest.raises(ConfigurationError, match="no transaction runner"):
        HandlerRunner().run(bus, placed())


def test_an_event_that_publish_would_refuse_is_refused(bus: EventBus) -> None:
    @bus.subscribe("order.placed")
    def invoice(event: Event) -> None: ...

    event = Event.create("order.placed", {"at": datetime.now()}, source="shop")
    with pytest.raises(InvalidEventData, match="cannot be encoded as JSON"):
        HandlerRunner().run(bus, event)


def test_a_published_event_is_worked_off_as_its_worker_would(bus: EventBus) -> None:
    # Given a subscriber whose worker has started (it recorded its subscriptions)
    shop = EventBus(Celery("shop", broker=MEMORY), service="shop")
    seen: list[int] = []
    template = {"missing": True}

    @bus.subscribe("order.placed", max_retries=1, retry_backoff=3)
    def invoice(event: Event) -> None:
        seen.append(event.data["order_id"])
        if event.data.get("broken") and template["missing"]:
            raise ValueError("no invoice template")

    bus.register()
    # When the shop publishes through the memory backend
    good = shop.publish("order.placed", {"order_id": 1})
    broken = shop.publish("order.placed", {"order_id": 2, "broken": True})
    [delivery] = good.deliveries
    assert delivery.handler == "billing.invoice"

    # Then the runner does what the subscriber's worker would: every delivery, its retries
    runner = HandlerRunner()
    runs = runner.work(bus)
    assert [(r.event_id, r.status, r.attempts, r.retry_delays) for r in runs] == [
        (good.event.id, "succeeded", 1, ()),
        (broken.event.id, "dead_lettered", 2, (3.0,)),
    ]
    assert runs[0].task_id == delivery.task_id
    assert runner.work(bus) == []  # nothing is left to run

    # And the dead letter is in the bus's store; a replay is one more delivery to work off
    [letter] = bus.dead_letters.list()
    assert (letter.id, letter.reason, letter.attempts) == (
        runs[1].task_id, "retries_exhausted", 2,
    )
    template["missing"] = False
    bus.dead_letters.replay(letter.id)
    [replayed] = runner.work(bus)
    assert (replayed.event_id, replayed.status, replayed.attempts) == (
        broken.event.id, "succeeded", 1,
    )
    assert bus.dead_letters.count() == 0 and seen == [1, 2, 2, 2]
    shop.close()


def test_a_retry_left_by_a_runner_that_runs_none_is_on_the_queue(bus: EventBus) -> None:
    calls: list[str] = []

    @bus.subscribe("order.placed")
    def later(event: Event) -> None:
        calls.append(event.id)
        if len(calls) == 1:
            raise Retry(delay=30)

    runner = HandlerRunner(run_retries=False)
    [waiting] = runner.run(bus, placed())
    assert (waiting.status, waiting.attempts, waiting.retry_delays) == ("retrying", 1, (30.0,))
    assert runner.work(bus) == []  # the retry is left where it is
    # The retry is a real message on the service's queue: a worker (here, a runner) runs it
    runner.run_retries = True
    [retried] = runner.work(bus)
    assert (retried.task_id, retried.status, retried.attempts, retried.retry_delays) == (
        waiting.task_id, "succeeded", 2, (30.0,),
    )
    assert calls == [waiting.event_id] * 2
