"""``bus.publish_many``: many events in one call, real workers, a real Redis.

The atomicity test reads the backend's ``atomic_batches`` capability: with it a refused event
leaves nothing queued; without it the events before the refused one stay sent and
``PartialPublishError`` says how many.
"""

from __future__ import annotations

from collections import Counter

import pytest
import redis

from celery_events import (
    EventBus,
    InvalidEventData,
    NoSubscribersError,
    PartialPublishError,
    PublishError,
)

from ..harness import wait_until
from .conftest import effect_counts, effects
from .test_publish_refused import snapshot

ORDERS = "tests.services.orders"
MAILER = "tests.services.mailer"


def test_every_handler_gets_every_event_of_a_publish_many_exactly_once(
    start_worker, publisher: EventBus, redis_client: redis.Redis
) -> None:
    # Given two subscriber services running
    start_worker(ORDERS)
    start_worker(MAILER)

    # When the shop publishes a batch of events of several names, in each of the item forms
    results = publisher.publish_many(
        [("user.registered", {"user_id": i}) for i in range(10)]
        + [{"name": "order.created", "data": {"order_id": 1}, "subject": "1"}]
        + [publisher.new_event("user.deleted", {"user_id": 3})]
        + [("payment.failed", {"id": 1})]
    )

    # Then it returns one result per event, in order, as publish would
    assert [r.event.name for r in results] == ["user.registered"] * 10 + [
        "order.created",
        "user.deleted",
        "payment.failed",
    ]
    assert results[10].event.subject == "1"
    assert results[-1].deliveries == ()
    expected: Counter[tuple[str, str]] = Counter()
    for result in results:
        for delivery in result.deliveries:
            expected[(delivery.handler, result.event.id)] = 1
    assert len(expected) == 10 * 3 + 1 + 1
    # and each handler runs each event once
    wait_until(lambda: sum(effect_counts(redis_client).values()) >= sum(expected.values()))
    assert effect_counts(redis_client) == expected
    first = next(e for e in effects(redis_client) if e["event_id"] == results[0].event.id)
    assert first["data"] == {"user_id": 0}


def test_a_bad_item_is_named_by_its_index_and_nothing_is_sent(
    publisher: EventBus, redis_client: redis.Redis, start_worker
) -> None:
    # Given a subscriber registered and stopped, and Redis as it is
    start_worker(MAILER).stop()
    before = snapshot(redis_client)

    # When the third item's data is not a JSON object, or the second has no subscriber
    # while subscribers are required
    with pytest.raises(InvalidEventData, match="Event 2 of the publish_many"):
        publisher.publish_many(
            [("user.registered", {"user_id": 1}), ("user.registered", {}), ("user.registered", [1])]  # type: ignore[list-item]
        )
    with pytest.raises(NoSubscribersError, match="Event 1 of the publish_many"):
        publisher.publish_many(
            [("user.registered", {"user_id": 1}), ("nobody.listens", {})],
            require_subscribers=True,
        )

    # Then nothing was queued
    assert snapshot(redis_client) == before
    assert publisher.publish_many([]) == []


def test_an_event_the_broker_refuses_sends_what_the_backend_promises(
    publisher: EventBus, redis_client: redis.Redis, start_worker
) -> None:
    # Given the orders queue registered, and the mailer's queue key holding a string
    start_worker(ORDERS).stop()
    start_worker(MAILER).stop()
    redis_client.delete("events.orders", "events.mailer")
    redis_client.set("events.mailer", "not a queue")

    # When a batch's first event goes to orders alone and its second to the mailer too
    with pytest.raises(PublishError) as raised:
        publisher.publish_many(
            [("user.deleted", {"user_id": 1}), ("order.created", {"order_id": 1})]
        )

    # Then with atomic batches nothing is queued; without, the first event stays sent
    if publisher.backend.capabilities.atomic_batches:
        assert not isinstance(raised.value, PartialPublishError)
        assert redis_client.llen("events.orders") == 0
    else:
        assert isinstance(raised.value, PartialPublishError)
        assert raised.value.sent == 1
        assert [r.event.name for r in raised.value.results] == ["user.deleted"]
        assert redis_client.llen("events.orders") == 1
