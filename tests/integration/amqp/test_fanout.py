"""RabbitMQ: one message per publish, routed by the broker to each handler's own queue, and
turned into each handler's delivery (own task id, retries, inbox, dead letter) by the worker."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from celery import Celery

from celery_events import EventBus, PublishError

from ...harness import Worker, wait_until
from .conftest import Rabbit, records


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
    wait_until(lambda: len(records(redis_client, "test:effects")) == 4, timeout=20,
               what="four effects")
    effects = records(redis_client, "test:effects")
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
    # (declared as its owner declares it: a quorum queue with the owner's arguments)
    declared = rabbit.queues()["events.gone.handler"]
    assert declared["type"] == "quorum"
    assert declared["arguments"] == dict(sub.subscriptions()[0].arguments)
    rabbit.ctl("delete_queue", "events.gone.handler")
    # When the event is published again (the publisher believes the queue exists)
    # Then the broker returns it and the publish fails, nothing sent
    with pytest.raises(PublishError, match="no queue is bound for it"):
        publisher.publish("shop.gone", {})
    sub.close()


def test_celerys_publish_signals_fire_once_per_delivery(
    rabbit: Rabbit, publisher: EventBus
) -> None:
    from celery import signals

    sub = EventBus(Celery("sig", broker=rabbit.url), service="sig", registry_url=rabbit.state_url)

    @sub.subscribe("shop.signal")
    def one(event: object) -> None: ...

    @sub.subscribe("shop.#")
    def two(event: object) -> None: ...

    sub.register()
    before: list[tuple[str, str, str]] = []
    after: list[tuple[str, str]] = []

    def on_before(sender: str, headers: dict[str, object], routing_key: str, **kwargs: object) -> None:
        before.append((sender, str(headers["id"]), routing_key))

    def on_after(sender: str, headers: dict[str, object], **kwargs: object) -> None:
        after.append((sender, str(headers["id"])))

    signals.before_task_publish.connect(on_before, weak=False)
    signals.after_task_publish.connect(on_after, weak=False)
    try:
        result = publisher.publish("shop.signal", {})
    finally:
        signals.before_task_publish.disconnect(on_before)
        signals.after_task_publish.disconnect(on_after)
        sub.close()
    expected = sorted((d.handler, d.task_id) for d in result.deliveries)
    assert sorted((task, id) for task, id, _ in before) == expected
    assert {key for _, _, key in before} == {"shop.signal"}
    assert sorted(after) == expected


def test_a_queue_that_exists_with_other_arguments_fails_the_publish_naming_it(
    rabbit: Rabbit, publisher: EventBus
) -> None:
    from kombu import Connection

    # Given a subscriber whose queue someone declared as classic, while its record says quorum
    sub = EventBus(Celery("odd", broker=rabbit.url), service="odd", registry_url=rabbit.state_url)

    @sub.subscribe("shop.odd")
    def handler(event: object) -> None: ...

    sub.register()
    with Connection(rabbit.url) as connection:
        connection.channel().queue_declare("events.odd.handler", durable=True, auto_delete=False)
    # Then the publish fails before anything is sent, naming the queue and the fix
    with pytest.raises(PublishError, match="'events.odd.handler' exists with other arguments"):
        publisher.publish("shop.odd", {})
    assert rabbit.ready("events.odd.handler") == 0
    # and the publisher's next event, to another subscriber, goes out on a new channel
    fine = EventBus(Celery("fine", broker=rabbit.url), service="fine", registry_url=rabbit.state_url)

    @fine.subscribe("shop.fine")
    def ok(event: object) -> None: ...

    fine.register()
    publisher.registry.refresh()  # see the new subscription now, not within the staleness bound
    assert len(publisher.publish("shop.fine", {}).deliveries) == 1
    assert rabbit.ready("events.fine.ok") == 1
    sub.close()
    fine.close()
