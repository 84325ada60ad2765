"""RabbitMQ: ``await bus.apublish`` sends through py-amqp, which has no asyncio API, in a
worker thread; the results and the partial-batch error are ``publish_many``'s."""

from __future__ import annotations

import asyncio
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


def test_apublish_reaches_every_subscriber_and_a_partial_batch_says_what_was_sent(
    rabbit: Rabbit, subscribers: EventBus, publisher: EventBus
) -> None:
    # Given events apublished concurrently to both handlers
    async def first() -> list[list[str]]:
        results = await asyncio.gather(
            *(publisher.apublish(name, {"n": 1}) for name in ("cart.added", "bill.sent"))
        )
        return [[d.handler for d in r.deliveries] for r in results]

    assert asyncio.run(first()) == [["carts.keep"], ["carts.bill"]]
    assert rabbit.ready("events.carts.keep") == 1 and rabbit.ready("events.carts.bill") == 1

    # When the bill queue is deleted behind the publisher's back and a batch goes to both
    with Connection(rabbit.url) as connection:
        connection.channel().queue_delete("events.carts.bill")
    with pytest.raises(PartialPublishError) as raised:
        asyncio.run(
            publisher.apublish_many(
                [("cart.added", {"n": 2}), ("bill.sent", {"n": 2}), ("cart.added", {"n": 3})]
            )
        )

    # Then, as from publish_many, the first event was sent, and only it was queued
    assert raised.value.sent == 1
    assert "events[1:]" in str(raised.value)
    assert rabbit.ready("events.carts.keep") == 2
