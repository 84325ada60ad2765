"""RabbitMQ: one message per publish, routed by the broker to each handler's own queue, and
turned into each handler's delivery (own task id, retries, inbox, dead letter) by the worker."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
import redis
from celery import Celery

from celery_events import EventBus, PublishError

from ...harness import Worker, wait_until
from .conftest import Rabbit


def _records(client: redis.Redis, key: str) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in client.lrange(key, 0, -1)]


@pytest.fixture
def publisher(rabbit: Rabbit) -> Iterator[EventBus]:
    bus = EventBus(Celery("shop", broker=rabbit.url), service="shop", registry_url=rabbit.state_url)
    yield bus
    bus.close()


def test_each_handler_gets_its_own_delivery_from_one_message(
    rabbit: Rabbit,
    publisher: EventBus,
    start_rabbit_worker: Callable[..., Worker],
    redis_client: redis.Redis,
) -> None:
    # Given two services subscribing to shop events, one with two handlers that both match
    start_rabbit_worker(RABBIT_SERVICE="alpha")
    start_rabbit_worker(RABBIT_SERVICE="beta")
    # When one event is published
    result = publisher.publish("shop.order.created", {"n": 1})
    # Then each of the four handlers took effect once, with the task id the publisher reported
    reported = {d.handler: d.task_id for d in result.deliveries}
    assert set(reported) == {"alpha.seen", "alpha.orders", "beta.seen", "beta.orders"}
    assert len(set(reported.values())) == 4
    wait_until(lambda: len(_records(redis_client, "test:effects")) == 4, timeout=20,
               what="four effects")
    effects = _records(redis_client, "test:effects")
    assert {e["handler"]: e["task_id"] for e in effects} == reported
    # And each handler has its own quorum queue, bound to the events exchange
    queues = rabbit.queues()
    for delivery in result.deliveries:
        assert queues[delivery.queue]["type"] == "quorum"
    assert {d.queue for d in result.deliveries} == {
        "events.alpha.seen", "events.alpha.orders", "events.beta.seen", "events.beta.orders"
    }


def test_an_event_no_queue_takes_is_a_publish_error(rabbit: Rabbit, publisher: EventBus) -> None:
    # Given a subscriber's queue that was deleted after it registered
    sub = EventBus(Celery("gone", broker=rabbit.url), service="gone", registry_url=rabbit.state_url)

    @sub.subscribe("shop.gone")
    def handler(event: object) -> None: ...

    sub.register()
    publisher.publish("shop.gone", {})  # declares the queue from the record's arguments
    assert "events.gone.handler" in rabbit.queues()
    rabbit.ctl("delete_queue", "events.gone.handler")
    # When the event is published again (the publisher believes the queue exists)
    # Then the broker returns it and the publish fails, nothing sent
    with pytest.raises(PublishError, match="no queue is bound for it"):
        publisher.publish("shop.gone", {})
    sub.close()
