"""`celery -A proj worker` of a Django project: its handlers, its inbox, its outbox relay."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
import redis
from celery import Celery
from django.db import transaction
from django.test import override_settings

from celery_events import EventBus

from ..harness import RedisServer, Worker, wait_until
from ..integration.conftest import effect_counts
from .conftest import BOTH
from .settings import CELERY_EVENTS
from .warehouse.models import Shipment

pytestmark = [
    pytest.mark.django_db(transaction=True, databases=BOTH),
    pytest.mark.integration,
]


@pytest.fixture
def shop(redis_url: str):
    """Another service, plain Celery, that publishes orders."""
    bus = EventBus(Celery("shop", broker=redis_url), service="shop")
    yield bus
    bus.close()


@pytest.fixture(autouse=True)
def warehouse_in_postgres():
    with override_settings(CELERY_EVENTS={**CELERY_EVENTS, "database": "pg"}):
        yield


def shipments() -> Counter[str]:
    return Counter(Shipment.objects.values_list("event_id", flat=True))


def test_the_worker_finds_the_handlers_before_it_records_its_subscriptions(
    start_django_worker: Callable[..., Worker], shop: EventBus, redis_client: redis.Redis
) -> None:
    # Given the warehouse worker started in an empty Redis (nothing registered in-process)
    start_django_worker()
    # Then its subscriptions from subscribers.py are in the registry
    assert sorted(s.handler for s in shop.registry.subscriptions()) == [
        "warehouse.count_orders", "warehouse.ship",
    ]
    # And an order published by another service reaches both handlers
    result = shop.publish("order.placed", {"order_id": 1})
    wait_until(lambda: len(effect_counts(redis_client)) == 2)
    assert effect_counts(redis_client) == {
        ("warehouse.ship", result.event.id): 1, ("warehouse.count_orders", result.event.id): 1,
    }
    assert shipments() == {result.event.id: 1}


def test_a_repeated_delivery_commits_its_database_effects_once(
    start_django_worker: Callable[..., Worker], shop: EventBus, redis_client: redis.Redis
) -> None:
    start_django_worker()
    # When one event is delivered three times (as a relay that crashed before marking it
    # sent would resend it), with the Redis inbox off for `ship`
    event = shop.new_event("order.placed", {"order_id": 2})
    for _ in range(3):
        shop.publish_event(event)
    # Then the atomic handler ran once and the database holds one shipment
    wait_until(lambda: effect_counts(redis_client)[("warehouse.count_orders", event.id)] >= 1)
    wait_until(lambda: shipments() == {event.id: 1})
    later = shop.publish("order.placed", {"order_id": 3})  # queued behind the repeats
    wait_until(lambda: shipments()[later.event.id] == 1)
    assert shipments() == {event.id: 1, later.event.id: 1}
    assert effect_counts(redis_client)[("warehouse.ship", event.id)] == 1


def test_a_failed_attempt_rolls_back_and_the_retry_commits(
    start_django_worker: Callable[..., Worker], shop: EventBus, redis_client: redis.Redis
) -> None:
    start_django_worker()
    result = shop.publish("order.placed", {"order_id": 4, "fail_once": True})
    # The first attempt wrote a shipment and failed: rolled back; the retry wrote it again
    wait_until(lambda: effect_counts(redis_client)[("warehouse.ship", result.event.id)] == 2)
    wait_until(lambda: shipments() == {result.event.id: 1})


def test_the_relay_in_the_worker_delivers_what_was_committed_while_the_broker_was_down(
    start_django_worker: Callable[..., Worker], redis_client: redis.Redis,
    redis_server: RedisServer, bus,
) -> None:
    # Given the warehouse worker runs the outbox relay
    start_django_worker(env={"CELERY_EVENTS_TEST_RELAY_IN_WORKER": "1"})
    # When orders are committed through the outbox while the broker is down
    redis_server.stop()
    with override_settings(CELERY_EVENTS={**CELERY_EVENTS, "database": "pg", "outbox": True}):
        with transaction.atomic(using="pg"):
            ids = [bus.publish("order.placed", {"order_id": i}).event.id for i in range(20)]
    # Then once it is back, every order is shipped exactly once
    redis_server.start()
    wait_until(lambda: len(shipments()) == 20, timeout=60, what="20 shipments")
    assert shipments() == Counter({i: 1 for i in ids})
    wait_until(lambda: sum(effect_counts(redis_client).values()) == 40)
    assert effect_counts(redis_client) == Counter(
        {(h, i): 1 for i in ids for h in ("warehouse.ship", "warehouse.count_orders")}
    )
