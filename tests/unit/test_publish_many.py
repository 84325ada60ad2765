"""``bus.publish_many`` on the memory backend: the handlers run once per event, every item is
validated before anything is sent, and middleware sees each event as in ``publish``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from kombu.transport import memory as kombu_memory

from celery_events import (
    Event,
    EventBus,
    InvalidEnvelope,
    Middleware,
    NoSubscribersError,
    PublishRefused,
    PublishResult,
)
from celery_events.backends import memory
from celery_events.middleware import PublishCall, PublishNext
from celery_events.testing import capture_published

from ..harness import wait_until


@pytest.fixture(autouse=True)
def _fresh_memory() -> Iterator[None]:
    memory.reset()
    yield
    memory.reset()


def make_bus(name: str, middleware: list[Middleware] | None = None) -> EventBus:
    app = Celery(name, broker="memory://", set_as_current=False)
    app.conf.broker_transport_options = {"polling_interval": 0.01}
    return EventBus(app, service=name, middleware=middleware or [])


def waiting(queue: str) -> int:
    """Messages waiting in a kombu in-memory queue."""
    found = kombu_memory.Channel.queues.get(queue)
    return 0 if found is None else found.qsize()


def subscribed(bus: EventBus, seen: list[Event]) -> None:
    @bus.subscribe("order.*")
    def on_order(event: Event) -> None:
        seen.append(event)

    bus.register()


def test_every_event_of_a_publish_many_is_handled_once_in_order_of_results() -> None:
    # Given a subscriber on memory://, with a worker in this process
    bus = make_bus("shop")
    seen: list[Event] = []
    subscribed(bus, seen)
    for queue in bus.queues:
        bus.app.amqp.queues.select_add(queue)

    with start_worker(bus.app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
        # When it publishes a batch in each item form
        results = bus.publish_many(
            [
                ("order.created", {"id": 1}),
                {"name": "order.created", "data": {"id": 2}, "subject": "two"},
                bus.new_event("order.paid", {"id": 3}),
                ("stock.low", {"sku": "a"}),
            ]
        )
        wait_until(lambda: len(seen) >= 3, timeout=15, what="three deliveries")

    # Then each handled event is one of the results, once, and the unsubscribed one went nowhere
    assert [len(r.deliveries) for r in results] == [1, 1, 1, 0]
    assert sorted(e.id for e in seen) == sorted(r.event.id for r in results[:3])
    assert {e.id: e.subject for e in seen}[results[1].event.id] == "two"
    assert bus.backend.capabilities.atomic_batches


def test_one_bad_item_raises_naming_its_index_and_nothing_is_sent() -> None:
    # Given a subscriber registered
    bus = make_bus("shop")
    subscribed(bus, [])
    queue = bus.queues[0]

    # When an item is not an event, a pair or a mapping, or a mapping has a key publish lacks
    with pytest.raises(InvalidEnvelope, match="Event 1 of the publish_many: publish_many takes"):
        bus.publish_many([("order.created", {}), 42])  # type: ignore[list-item]
    with pytest.raises(InvalidEnvelope, match="'colour', which publish does not take"):
        bus.publish_many([{"name": "order.created", "colour": "red"}])
    # or nobody subscribes to one while subscribers are required
    with pytest.raises(NoSubscribersError, match="Event 2 of the publish_many"):
        bus.publish_many(
            [("order.created", {}), ("order.paid", {}), ("stock.low", {})],
            require_subscribers=True,
        )

    # Then nothing was queued, and an empty batch sends nothing
    assert waiting(queue) == 0
    assert bus.publish_many([]) == []
    # while the same events without the requirement are all sent
    assert len(bus.publish_many([("order.created", {}), ("stock.low", {})])) == 2
    assert waiting(queue) == 1


class RefuseThird(Middleware):
    """Refuses the third event a publish scope sees; records what it saw and heard."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.published: list[tuple[str, int]] = []

    def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
        self.seen.append(call.event.id)
        if len(self.seen) == 3:
            raise PublishRefused("not this one")
        return call_next(call.with_extensions({"stamp": "yes"}))

    def on_published(self, result: PublishResult, origin: str) -> None:
        self.published.append((result.event.id, len(result.deliveries)))


def test_a_middleware_refusing_one_event_sends_none_and_hears_of_none() -> None:
    # Given a middleware that refuses the third event it sees
    refusing = RefuseThird()
    bus = make_bus("shop", [refusing])
    subscribed(bus, [])

    # When a batch of four is published
    with pytest.raises(PublishRefused, match="Event 2 of the publish_many: not this one"):
        bus.publish_many([("order.created", {"id": i}) for i in range(4)])

    # Then it saw three, nothing was queued, and no on_published listener heard of any
    assert len(refusing.seen) == 3
    assert waiting(bus.queues[0]) == 0
    assert refusing.published == []

    # And a batch it lets through is sent with what it changed, each event told once sent
    results = bus.publish_many([("order.created", {"id": 9}), ("stock.low", {})])
    assert all(r.event.extensions == {"stamp": "yes"} for r in results)
    assert refusing.published == [(results[0].event.id, 1), (results[1].event.id, 0)]
    assert waiting(bus.queues[0]) == 1


class Defer(Middleware):
    """Keeps each publish's ``call_next`` to run later, as publish-on-commit does."""

    def __init__(self) -> None:
        self.later: list[tuple[PublishNext, PublishCall]] = []

    def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
        self.later.append((call_next, call))
        return PublishResult(call.event, deferred=True)


def test_a_deferred_publish_of_a_batch_is_sent_when_its_hook_runs() -> None:
    # Given a middleware that defers every publish
    deferring = Defer()
    bus = make_bus("shop", [deferring])
    subscribed(bus, [])

    # When a batch is published, nothing is sent, and every result says it is deferred
    results = bus.publish_many([("order.created", {"id": i}) for i in range(3)])
    assert [r.deferred for r in results] == [True] * 3
    assert waiting(bus.queues[0]) == 0

    # Then running the hooks later sends each event, as publish would
    sent = [call_next(call) for call_next, call in deferring.later]
    assert [len(r.deliveries) for r in sent] == [1, 1, 1]
    assert waiting(bus.queues[0]) == 3


def test_capture_published_records_a_batch_and_sends_nothing() -> None:
    bus = make_bus("shop")
    subscribed(bus, [])
    with capture_published(bus) as published:
        bus.publish_many([("order.created", {"id": 1}), ("order.paid", {"id": 2})])
    assert published.names == ["order.created", "order.paid"]
    assert waiting(bus.queues[0]) == 0


def test_events_published_many_from_a_handler_name_the_handled_event_as_their_cause() -> None:
    # Given a handler that publishes two events with publish_many
    bus = make_bus("shop")
    children: list[Event] = []

    @bus.subscribe("order.created")
    def on_created(event: Event) -> None:
        bus.publish_many([("order.billed", {}), ("order.packed", {})])

    @bus.subscribe("order.billed")
    def on_billed(event: Event) -> None:
        children.append(event)

    @bus.subscribe("order.packed")
    def on_packed(event: Event) -> None:
        children.append(event)

    bus.register()
    for queue in bus.queues:
        bus.app.amqp.queues.select_add(queue)

    with start_worker(bus.app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
        parent = bus.publish("order.created", {"id": 1}, correlation_id="conv-1")
        wait_until(lambda: len(children) >= 2, timeout=15, what="two child events")

    # Then both carry its correlation and name it as their cause
    assert {(e.correlation_id, e.causation_id) for e in children} == {("conv-1", parent.event.id)}
