"""RabbitMQ: ``bus.publish_many`` sends its events in order, each as ``publish`` does (one
message routed to every subscriber). RabbitMQ has no transaction across messages, so a batch is
not atomic: a failure part way is a ``PartialPublishError`` naming the events that were sent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery
from kombu import Connection

from celery_events import EventBus, PartialPublishError

from .conftest import Rabbit


@pytest.fixture
def subscribers(rabbit: Rabbit) -> Iterator[EventBus]:
    """Two registered handlers: ``carts.keep`` of ``cart.#`` and ``carts.bill`` of ``bill.#``."""
    bus = EventBus(
        Celery("carts", broker=rabbit.url), service="carts", registry_url=rabbit.state_url
    )

    @bus.subscribe("cart.#")
    def keep(event: object) -> None: ...

    @bus.subscribe("bill.#")
    def bill(event: object) -> None: ...

    bus.register()
    yield bus
    bus.close()


def test_a_batch_reaches_every_subscriber_and_a_failure_part_way_says_what_was_sent(
    rabbit: Rabbit, subscribers: EventBus, publisher: EventBus
) -> None:
    # Given both queues declared by a first batch, which reaches each handler once per event
    assert not publisher.backend.capabilities.atomic_batches
    first = publisher.publish_many([("cart.added", {"n": 1}), ("bill.sent", {"n": 1})])
    assert [[d.handler for d in r.deliveries] for r in first] == [["carts.keep"], ["carts.bill"]]
    assert rabbit.ready("events.carts.keep") == 1 and rabbit.ready("events.carts.bill") == 1

    # When the bill queue is deleted behind the publisher's back and a batch goes to both
    with Connection(rabbit.url) as connection:
        connection.channel().queue_delete("events.carts.bill")
    with pytest.raises(PartialPublishError) as raised:
        publisher.publish_many(
            [("cart.added", {"n": 2}), ("bill.sent", {"n": 2}), ("cart.added", {"n": 3})]
        )

    # Then the error says the first event was sent, with its result, and only it was queued
    assert raised.value.sent == 1
    [sent] = raised.value.results
    assert sent.event.data == {"n": 2} and [d.handler for d in sent.deliveries] == ["carts.keep"]
    assert "events[1:]" in str(raised.value)
    assert rabbit.ready("events.carts.keep") == 2
