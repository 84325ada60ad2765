"""`publish()` in `transaction.atomic()` is sent after the commit, never after a rollback."""

from __future__ import annotations

import pytest
import redis
from django.db import transaction

from celery_events import NoSubscribersError, PublishError

from ..harness import RedisServer
from .helpers import queued_counts, queued_envelopes
from .warehouse.models import Order

QUEUE = "events.warehouse"
pytestmark = pytest.mark.django_db(transaction=True)


def test_outside_a_transaction_publish_sends_at_once(bus, redis_client: redis.Redis) -> None:
    result = bus.publish("order.placed", {"order_id": 1})
    assert result.deferred is False
    assert sorted(d.handler for d in result.deliveries) == [
        "warehouse.count_orders", "warehouse.ship",
    ]
    assert queued_counts(redis_client, QUEUE) == {result.event.id: 2}


def test_inside_a_transaction_the_event_is_sent_after_the_commit(
    bus, redis_client: redis.Redis
) -> None:
    # Given a transaction that writes an order and publishes about it
    with transaction.atomic():
        order = Order.objects.create(reference="A-1")
        result = bus.publish("order.placed", {"order_id": order.pk})
        # Then nothing is sent before the commit, and the result says so
        assert result.deferred is True and result.deliveries == ()
        assert redis_client.llen(QUEUE) == 0
    # When it commits, the very same event is sent
    envelopes = queued_envelopes(redis_client, QUEUE)
    assert len(envelopes) == 2
    assert all(e == result.event.to_envelope() for e in envelopes)


def test_a_publish_many_inside_a_transaction_is_sent_after_the_commit(
    bus, redis_client: redis.Redis
) -> None:
    # Given a transaction that publishes a batch
    with transaction.atomic():
        Order.objects.create(reference="A-9")
        results = bus.publish_many([("order.placed", {"order_id": i}) for i in range(3)])
        # Then nothing is sent before the commit, and each result says so
        assert [r.deferred for r in results] == [True] * 3
        assert redis_client.llen(QUEUE) == 0
    # When it commits, each event is sent to both handlers, as publish sends it
    assert queued_counts(redis_client, QUEUE) == {r.event.id: 2 for r in results}
    # and outside a transaction the batch goes at once
    now = bus.publish_many([("order.placed", {"order_id": 9})])
    assert now[0].deferred is False and len(now[0].deliveries) == 2


def test_after_a_rollback_nothing_is_sent(bus, redis_client: redis.Redis) -> None:
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            Order.objects.create(reference="A-2")
            bus.publish("order.placed", {"order_id": 2})
            raise RuntimeError("the view failed")
    assert Order.objects.count() == 0
    assert redis_client.llen(QUEUE) == 0


def test_a_rolled_back_savepoint_drops_only_its_own_events(
    bus, redis_client: redis.Redis
) -> None:
    with transaction.atomic():
        kept = bus.publish("order.placed", {"order_id": 3})
        try:
            with transaction.atomic():
                bus.publish("order.placed", {"order_id": 4})
                raise ValueError("inner step failed")
        except ValueError:
            pass
    assert queued_counts(redis_client, QUEUE) == {kept.event.id: 2}


def test_require_subscribers_is_checked_when_publish_is_called(bus) -> None:
    with transaction.atomic():
        with pytest.raises(NoSubscribersError, match="'stock.counted'"):
            bus.publish("stock.counted", {"sku": "x"}, require_subscribers=True)


def test_a_send_that_fails_after_the_commit_raises_from_the_atomic_block(
    bus, redis_server: RedisServer
) -> None:
    # Given the broker goes down while a transaction is open
    with pytest.raises(PublishError):
        with transaction.atomic():
            Order.objects.create(reference="A-5")
            bus.publish("order.placed", {"order_id": 5})
            redis_server.stop()
    # Then the caller hears of it, with the data committed (the outbox avoids this case)
    assert Order.objects.filter(reference="A-5").exists()
