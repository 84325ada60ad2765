"""The middleware chain: order, the publish scope (add, refuse, defer), the handle scope, and
what an empty chain skips. Publish scopes run with no broker: the bus points at a port nothing
listens on, so anything that reached the registry or the broker would fail. Handle scopes run on
the memory backend, through the real delivery task (the HandlerRunner)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celery_events import (
    ConfigurationError,
    Event,
    EventBus,
    HandlerCall,
    InvalidEnvelope,
    Middleware,
    PublishCall,
    PublishError,
    PublishRefused,
    PublishResult,
    Retry,
)
from celery_events.backends import memory
from celery_events.middleware import SKIPPED, HandleNext, PublishNext
from celery_events.testing import HandlerRunner, capture_published

NO_BROKER = "redis://127.0.0.1:1/0"
MEMORY = "memory://"


class Recorder(Middleware):
    """Records when each of its scopes is entered and left, and stamps published events."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
        self.log.append(f"{self.name}>publish")
        stamped = call.event.with_extensions({f"by{self.name}": len(self.log)})
        result = call_next(call.with_event(stamped))
        self.log.append(f"{self.name}<publish")
        return result

    def handle(self, call: HandlerCall, call_next: HandleNext) -> Any:
        self.log.append(f"{self.name}>handle:{call.attempt}")
        try:
            return call_next(call)
        finally:
            self.log.append(f"{self.name}<handle:{call.attempt}")


class Refuse(Middleware):
    def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
        raise PublishRefused(f"{call.event.name!r} may not be published by this service.")


class Defer(Middleware):
    """Keeps each publish for later, as publish-on-commit does."""

    def __init__(self) -> None:
        self.pending: list[tuple[PublishCall, PublishNext]] = []

    def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
        call.check_subscribers()
        self.pending.append((call, call_next))
        return PublishResult(call.event, deferred=True)

    def flush(self) -> list[PublishResult]:
        sent = [call_next(call) for call, call_next in self.pending]
        self.pending.clear()
        return sent


class Listener(Middleware):
    """Only notifications: adds no scope."""

    def on_retry(self, call: HandlerCall, error: BaseException, countdown: float) -> None:
        raise RuntimeError("a broken listener")


def offline_bus(name: str, middleware: list[Middleware]) -> EventBus:
    return EventBus(
        Celery(name, broker=NO_BROKER), service=name, middleware=middleware, publish_timeout=0.2
    )


def memory_bus(name: str, middleware: list[Middleware]) -> EventBus:
    """A bus on the memory backend: the HandlerRunner runs its deliveries in this process,
    through the real delivery task and its handle scopes."""
    return EventBus(Celery(name, broker=MEMORY), service=name, middleware=middleware)


@pytest.fixture
def log() -> list[str]:
    return []


@pytest.fixture
def buses() -> Iterator[list[EventBus]]:
    made: list[EventBus] = []
    yield made
    for bus in made:
        bus.close()
    memory.reset()


def test_publish_scopes_run_in_list_order_and_their_attributes_reach_the_send(
    log: list[str], buses: list[EventBus]
) -> None:
    bus = offline_bus("shop", [Recorder("a", log), Recorder("b", log)])
    buses.append(bus)
    with capture_published(bus) as published:
        result = bus.publish("order.placed", {"order_id": 7})
    assert log == ["a>publish", "b>publish", "b<publish", "a<publish"]
    [sent] = published
    assert dict(sent.extensions) == {"bya": 1, "byb": 2}
    assert result.event is sent and sent.data == {"order_id": 7}


def test_a_refusing_middleware_stops_the_publish_before_anything_is_read_or_sent(
    log: list[str], buses: list[EventBus]
) -> None:
    bus = offline_bus("shop", [Refuse(), Recorder("after", log)])
    buses.append(bus)
    # Without the refusal the offline broker would raise PublishError.
    with pytest.raises(PublishRefused, match="may not be published"):
        bus.publish("order.placed", {"order_id": 7})
    with pytest.raises(PublishRefused):
        bus.publish_event(Event.create("order.placed", {}, source="shop"))
    assert log == []
    plain = offline_bus("plain", [])
    buses.append(plain)
    with pytest.raises(PublishError):
        plain.publish("order.placed", {})


def test_bad_input_is_refused_before_the_chain(log: list[str], buses: list[EventBus]) -> None:
    bus = offline_bus("shop", [Recorder("a", log)])
    buses.append(bus)
    with pytest.raises(Exception, match="cannot be encoded as JSON"):
        bus.publish("order.placed", {"at": object()})
    assert log == []


def test_a_deferred_publish_is_sent_later_through_the_rest_of_the_chain(
    log: list[str], buses: list[EventBus]
) -> None:
    defer = Defer()
    bus = offline_bus("shop", [Recorder("outer", log), defer, Recorder("inner", log)])
    buses.append(bus)
    with capture_published(bus) as published:
        result = bus.publish("order.placed", {"order_id": 1})
        assert result.deferred and result.deliveries == ()
        assert len(published) == 0 and log == ["outer>publish", "outer<publish"]
        [later] = defer.flush()
    assert log[2:] == ["inner>publish", "inner<publish"]
    [sent] = published
    assert sent.id == result.event.id and later.event is sent
    assert set(sent.extensions) == {"byouter", "byinner"}


def test_a_deferring_middleware_checks_required_subscribers_before_it_defers(
    buses: list[EventBus],
) -> None:
    defer = Defer()
    bus = offline_bus("shop", [defer])
    buses.append(bus)
    # The registry is unreachable: the check fails now, and nothing is put aside.
    with pytest.raises(PublishError, match="Could not publish 'order.placed'"):
        bus.publish("order.placed", {}, require_subscribers=True)
    assert defer.pending == []
    bus.publish("order.placed", {})  # not required: no registry read until it is sent
    assert len(defer.pending) == 1


def test_a_middleware_cannot_pass_on_an_event_a_subscriber_would_refuse(
    buses: list[EventBus],
) -> None:
    class BadStamp(Middleware):
        def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
            from dataclasses import replace

            return call_next(call.with_event(replace(call.event, extensions={"Bad-Name": 1})))

    bus = offline_bus("shop", [BadStamp()])
    buses.append(bus)
    with capture_published(bus) as published, pytest.raises(InvalidEnvelope):
        bus.publish("order.placed", {})
    assert len(published) == 0


def test_handle_scopes_wrap_the_handler_in_list_order_with_the_delivery_details(
    log: list[str], buses: list[EventBus]
) -> None:
    seen: list[HandlerCall] = []

    class Details(Middleware):
        def handle(self, call: HandlerCall, call_next: HandleNext) -> Any:
            seen.append(call)
            return call_next(call)

    bus = memory_bus("mailer", [Recorder("a", log), Recorder("b", log), Details()])
    buses.append(bus)

    @bus.subscribe("order.placed", queue="mail", retry_backoff=0.01, retry_jitter=False)
    def mail(event: Event) -> None:
        log.append("handler")
        if len(seen) == 1:
            raise Retry(delay=0.01)

    event = Event.create("order.placed", {"order_id": 2}, source="shop")
    [run] = HandlerRunner().run(bus, event)
    assert run.status == "succeeded" and run.attempts == 2
    assert log == [
        "a>handle:1", "b>handle:1", "handler", "b<handle:1", "a<handle:1",
        "a>handle:2", "b>handle:2", "handler", "b<handle:2", "a<handle:2",
    ]
    first, second = seen
    assert (first.handler, first.queue, first.service, first.atomic) == (
        "mailer.mail", "mail", "mailer", False
    )
    assert first.event.id == event.id and first.task_id == second.task_id
    assert (first.attempt, second.attempt) == (1, 2)


def test_a_handle_scope_that_skips_the_delivery_keeps_the_handler_from_running(
    buses: list[EventBus],
) -> None:
    class AlreadyDone(Middleware):
        def handle(self, call: HandlerCall, call_next: HandleNext) -> Any:
            return SKIPPED

    bus = memory_bus("mailer", [AlreadyDone()])
    buses.append(bus)
    ran: list[str] = []

    @bus.subscribe("order.placed")
    def mail(event: Event) -> None:
        ran.append(event.id)

    [run] = HandlerRunner().run(bus, Event.create("order.placed", {}, source="shop"))
    assert (run.status, run.attempts, ran) == ("skipped", 0, [])


def test_the_handler_runner_delivers_past_the_subscribers_publish_scopes(
    buses: list[EventBus],
) -> None:
    # Given a service whose publish scope refuses every event it would send
    bus = memory_bus("mailer", [Refuse()])
    buses.append(bus)
    seen: list[Event] = []
    bus.subscribe("order.placed")(seen.append)
    event = Event.create("order.placed", {"order_id": 3}, source="shop")
    with pytest.raises(PublishRefused):
        bus.publish("order.placed", {})
    # When the runner delivers an event another service published, Then the handler gets it
    # unchanged: a delivery arrives, it is not published by the subscriber
    [run] = HandlerRunner().run(bus, event)
    assert run.status == "succeeded" and seen == [event]


def test_an_empty_chain_and_a_listening_only_chain_add_no_scope(buses: list[EventBus]) -> None:
    plain = offline_bus("plain", [])
    listening = offline_bus("listening", [Listener()])
    buses.extend([plain, listening])
    for bus in (plain, listening):
        assert bus.middleware.publish_scope is None and bus.middleware.handle_scope is None
    assert len(plain.middleware) == 0 and plain.middleware.on_retry == ()
    assert len(listening.middleware.on_retry) == 1 and listening.middleware.on_dead_letter == ()


def test_a_notification_that_raises_is_logged_and_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture, buses: list[EventBus]
) -> None:
    heard: list[float] = []

    class Hears(Middleware):
        def on_retry(self, call: HandlerCall, error: BaseException, countdown: float) -> None:
            heard.append(countdown)

    bus = offline_bus("shop", [Listener(), Hears()])
    buses.append(bus)
    chain = bus.middleware
    call = HandlerCall(Event.create("a.b", {}, source="x"), "shop.h", "q", "t-1", 1, "shop")
    with caplog.at_level(logging.ERROR):
        chain.notify(chain.on_retry, call, ValueError("boom"), 1.5)
    assert heard == [1.5]
    assert "middleware notification" in caplog.text and "a broken listener" in caplog.text


def test_the_chain_takes_only_middleware_instances() -> None:
    with pytest.raises(ConfigurationError, match="instances of celery_events.Middleware"):
        offline_bus("shop", [Recorder])  # type: ignore[list-item]


def test_an_atomic_handler_without_a_transactional_middleware_is_refused(
    buses: list[EventBus],
) -> None:
    class Transactions(Middleware):
        transactional = True

    plain = memory_bus("plain", [])
    with_transactions = memory_bus("tx", [Transactions()])
    buses.extend([plain, with_transactions])
    for bus in (plain, with_transactions):

        @bus.subscribe("order.placed", atomic=True)
        def book(event: Event) -> None: ...

    event = Event.create("order.placed", {}, source="shop")
    with pytest.raises(ConfigurationError, match="no transaction runner"):
        HandlerRunner().run(plain, event)
    [run] = HandlerRunner().run(with_transactions, event)
    assert run.status == "succeeded"


def test_a_middleware_adds_extension_attributes_to_the_call_checked_once(
    buses: list[EventBus],
) -> None:
    class Stamp(Middleware):
        def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
            stamped = call.with_extensions({"tenant": "acme", "unwanted": None})
            assert stamped.data_json == call.data_json and stamped.origin == call.origin
            return call_next(stamped)

    class BadStamp(Middleware):
        def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
            return call_next(call.with_extensions({"Bad-Name": 1}))

    bus = offline_bus("shop", [Stamp()])
    buses.append(bus)
    with capture_published(bus) as published:
        bus.publish("order.placed", {}, extensions={"unwanted": "x"})
    assert dict(published[0].extensions) == {"tenant": "acme"}

    refused = offline_bus("mall", [BadStamp()])
    buses.append(refused)
    with capture_published(refused) as nothing, pytest.raises(InvalidEnvelope):
        refused.publish("order.placed", {})
    assert len(nothing) == 0


def test_the_publish_paths_own_copies_of_a_call_are_those_of_its_dataclass() -> None:
    # PublishCall._made and with_extensions fill the instance's fields directly (for speed):
    # they must give exactly what the constructor and dataclasses.replace give.
    import dataclasses

    event = Event.create("order.placed", {"order_id": 7}, source="shop", subject="7")

    def check(call: PublishCall) -> None:
        raise AssertionError

    def encode(event: Event) -> str:
        return "{}"

    made = PublishCall._made(event, True, "publish", "{}", None, check, encode)
    built = PublishCall(event, True, "publish", "{}", None, _check=check, _encode=encode)
    assert vars(made) == vars(built) and list(vars(made)) == list(vars(built))
    assert [f.name for f in dataclasses.fields(PublishCall)] == list(vars(made))

    stamped = made.with_extensions({"tenant": "acme"})
    replaced = dataclasses.replace(
        built, event=dataclasses.replace(event, extensions={"tenant": "acme"})
    )
    assert vars(stamped) == vars(replaced) and vars(stamped.event) == vars(replaced.event)
    assert type(stamped.event.extensions) is type(replaced.event.extensions)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stamped.event.name = "order.paid"  # type: ignore[misc]
