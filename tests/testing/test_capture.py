"""capture_published records what would be sent, and sends nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from celery_events import Event, EventBus, InvalidEventName, Reject
from celery_events.backends import memory
from celery_events.testing import HandlerRunner, capture_published

# Nothing listens on port 1: a bus that tried to reach this broker would fail.
NO_BROKER = "redis://127.0.0.1:1/0"


@pytest.fixture
def offline_bus() -> Iterator[EventBus]:
    bus = EventBus(Celery("shop", broker=NO_BROKER), service="shop", publish_timeout=0.2)
    yield bus
    bus.close()


def test_published_events_are_recorded_and_not_sent(offline_bus: EventBus) -> None:
    with capture_published(offline_bus) as published:
        result = offline_bus.publish("order.placed", {"order_id": 7}, correlation_id="c-1")
        prebuilt = Event.create("order.cancelled", {"order_id": 7}, source="shop")
        offline_bus.publish_event(prebuilt)
    assert result.deliveries == () and result.deferred is False
    assert published.names == ["order.placed", "order.cancelled"]
    assert published[0] is result.event and published[1] is prebuilt
    assert published[0].data == {"order_id": 7} and published[0].correlation_id == "c-1"
    assert published.named("order.cancelled") == [prebuilt]


def test_bad_input_still_raises_inside_a_capture(offline_bus: EventBus) -> None:
    with capture_published(offline_bus) as published:
        with pytest.raises(InvalidEventName):
            offline_bus.publish("Order Placed", {})
    assert len(published) == 0


def test_after_the_block_the_bus_sends_again(redis_url: str, redis_client: redis.Redis) -> None:
    bus = EventBus(Celery("shop2", broker=redis_url), service="shop2")
    subscriber = EventBus(Celery("mailer2", broker=redis_url), service="mailer2")

    @subscriber.subscribe("order.placed")
    def mail(event: Event) -> None: ...

    subscriber.register()
    try:
        with capture_published(bus) as outer:
            with capture_published(bus) as inner:
                bus.publish("order.placed", {"order_id": 1})
            bus.publish("order.placed", {"order_id": 2})
        assert [e.data for e in inner] == [{"order_id": 1}]
        assert [e.data for e in outer] == [{"order_id": 2}]
        assert redis_client.llen("events.mailer2") == 0
        result = bus.publish("order.placed", {"order_id": 3})
        assert [d.handler for d in result.deliveries] == ["mailer2.mail"]
        assert redis_client.llen("events.mailer2") == 1
    finally:
        bus.close()
        subscriber.close()


def test_events_published_by_a_handler_name_the_handled_event_as_their_cause() -> None:
    # The runner delivers on the memory backend; the capture keeps the handler's publish.
    bus = EventBus(Celery("shop3", broker="memory://"), service="shop3")

    @bus.subscribe("order.placed")
    def confirm(event: Event) -> None:
        bus.publish("order.confirmed", {"order_id": event.data["order_id"]})

    placed = Event.create("order.placed", {"order_id": 4}, source="shop")
    with capture_published(bus) as published:
        [run] = HandlerRunner().run(bus, placed)
    assert run.status == "succeeded"
    [confirmed] = published
    assert confirmed.causation_id == placed.id and confirmed.correlation_id == placed.correlation_id
    bus.close()


def test_a_dead_letter_replayed_inside_a_capture_is_sent_not_captured() -> None:
    # Given a dead letter on the memory backend
    bus = EventBus(Celery("shop4", broker="memory://"), service="shop4")
    calls: list[int] = []

    @bus.subscribe("order.placed")
    def bill(event: Event) -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise Reject("card declined")

    runner = HandlerRunner()
    try:
        [first] = runner.run(bus, Event.create("order.placed", {"order_id": 5}, source="shop"))
        assert first.status == "dead_lettered"
        # When it is replayed inside a capture block
        with capture_published(bus) as published:
            [letter] = bus.dead_letters.replay(first.task_id)
        # Then the replay was sent (a replay is not a publish) and the handler runs it
        assert len(published) == 0 and letter.task_id == first.task_id
        [again] = runner.work(bus)
        assert (again.handler, again.status) == ("shop4.bill", "succeeded")
        assert again.task_id != first.task_id and calls == [0, 1]
    finally:
        bus.close()
        memory.reset()
