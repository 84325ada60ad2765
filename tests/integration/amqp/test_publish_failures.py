"""RabbitMQ: a publish while a broker node is down is retried within publish_timeout, then
is a typed PublishError saying whether the event may have been queued; a broker URL list
fails over to the next node."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from celery import Celery

from celery_events import EventBus, PublishError

from ...harness import free_port
from .conftest import Rabbit


@pytest.fixture
def subscriber(rabbit: Rabbit) -> Iterator[EventBus]:
    """A registered subscriber of ``shop.#`` (its queue declared by the first publish)."""
    bus = EventBus(Celery("sub", broker=rabbit.url), service="sub", registry_url=rabbit.state_url)

    @bus.subscribe("shop.#")
    def handler(event: object) -> None: ...

    bus.register()
    yield bus
    bus.close()


def test_a_publish_while_the_node_is_down_is_a_typed_publish_error(
    rabbit: Rabbit, subscriber: EventBus
) -> None:
    # Given a publisher that has published once, and the broker node killed
    publisher = EventBus(
        Celery("shop", broker=rabbit.url), service="shop", registry_url=rabbit.state_url,
        publish_timeout=5.0,
    )
    try:
        publisher.publish("shop.order.created", {"n": 1})
        # A node that stops answering (frozen, as a hung host): the publish is written but
        # never confirmed. (A killed node's socket is reset: whether the write fails at once
        # or after it went out depends on when the reset arrives, so it cannot stand for a
        # lost confirm.)
        assert rabbit.server.process is not None
        os.killpg(rabbit.server.process.pid, signal.SIGSTOP)
        # When it publishes: a typed error after publish_timeout. The message was written
        # and not confirmed: from here it may have been queued (the same id resent would
        # dedupe), and the error says so
        began = time.monotonic()
        with pytest.raises(PublishError, match="publish_timeout \\(5 s\\)") as raised:
            publisher.publish("shop.order.created", {"n": 2})
        took = time.monotonic() - began
        assert 4.5 < took < 10.0, took
        assert "It may have been queued" in str(raised.value)
        # And a publisher that never reached the broker says the event was not queued
        fresh = EventBus(
            Celery("shop", broker=rabbit.url), service="shop", registry_url=rabbit.state_url,
            publish_timeout=1.0,
        )
        with pytest.raises(PublishError, match="It was not queued"):
            fresh.publish("shop.order.created", {"n": 0})
        fresh.close()
    finally:
        if rabbit.server.process is not None:
            os.killpg(rabbit.server.process.pid, signal.SIGCONT)
        rabbit.server.kill()
        publisher.close()


def test_a_broker_url_list_fails_over_to_a_node_that_is_up(
    rabbit: Rabbit, subscriber: EventBus
) -> None:
    # Given a broker URL whose first node is down (nothing listens on its port)
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    publisher = EventBus(
        Celery("shop", broker=f"{dead};{rabbit.url}"), service="shop",
        registry_url=rabbit.state_url, publish_timeout=10.0,
    )
    try:
        # When events are published, the connection lost between two of them
        began = time.monotonic()
        publisher.publish("shop.order.created", {"n": 1})
        rabbit.ctl("close_all_connections", "a test closes every connection")
        for n in range(2, 5):
            publisher.publish("shop.order.created", {"n": n})
        # Then each went to the live node at once, none waiting out a pause
        assert time.monotonic() - began < 5.0
        assert rabbit.ready("events.sub.handler") == 4
    finally:
        publisher.close()
