"""On ``sentinel://`` the bus is the Redis backend, every role on the primary the sentinels
name: atomic fan-out, screening, the lost-delivery ledger and its sweeper, the reaper, the
inbox, dead letters, the registry, queue status."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import pytest
from celery import Celery

from celery_events import EventBus
from celery_events.backends import capabilities_of
from celery_events.backends.redis import CAPABILITIES as REDIS_CAPABILITIES
from celery_events.deadletters import Reason

from ...harness import Worker, wait_until
from .conftest import MASTER_NAME, SentinelTopology, effects

QUEUE = "events.sentinel_orders"


def test_a_sentinel_broker_has_every_capability_of_redis(
    make_bus: Callable[..., EventBus],
) -> None:
    bus = make_bus()
    assert bus.backend.name == "sentinel"
    assert bus.backend.capabilities == REDIS_CAPABILITIES
    assert capabilities_of("sentinel") == REDIS_CAPABILITIES
    assert bus.backend.capabilities.atomic_fanout
    assert bus.backend.capabilities.queue_screening
    assert bus.backend.capabilities.lost_delivery_ledger
    assert bus.backend.capabilities.dead_worker_recovery


def test_events_reach_a_worker_through_the_sentinel_transport(
    sentinel_topology: SentinelTopology,
    start_sentinel_worker: Callable[..., Worker],
    make_bus: Callable[..., EventBus],
) -> None:
    worker = start_sentinel_worker()
    shop = make_bus()
    shop.registry.refresh()

    result = shop.publish("order.placed", {"n": 1})

    wait_until(lambda: len(effects(sentinel_topology)) == 2, what="both handlers ran")
    assert sorted(e["handler"] for e in effects(sentinel_topology)) == ["bill", "ship"]
    assert {e["event_id"] for e in effects(sentinel_topology)} == {result.event.id}
    # Consumed from the primary: the deliveries' ledger entries and unacked records are gone.
    client = sentinel_topology.primary_client()
    wait_until(lambda: client.hlen("celery_events:ledger:sentinel_orders") == 0, what="ledger")
    assert "transport:   celery_events.backends.redis.transport:SentinelTransport" in worker.log()


def test_an_unreadable_item_on_an_event_queue_becomes_a_dead_letter(
    sentinel_topology: SentinelTopology,
    start_sentinel_worker: Callable[..., Worker],
    make_bus: Callable[..., EventBus],
) -> None:
    start_sentinel_worker()
    ops = make_bus("sentinel_orders")
    shop = make_bus()
    shop.registry.refresh()

    sentinel_topology.primary_client().lpush(QUEUE, b"\x80 not json at all")

    letters = wait_until(lambda: ops.dead_letters.list(), what="the item dead-lettered")
    assert [letter.reason for letter in letters] == [Reason.UNREADABLE]
    assert letters[0].raw == b"\x80 not json at all"
    # The worker lives on and handles the next event.
    result = shop.publish("order.shipped", {"n": 2})
    wait_until(
        lambda: [e["event_id"] for e in effects(sentinel_topology)] == [result.event.id],
        what="the next event handled",
    )


def test_a_delivery_lost_between_queue_and_worker_is_swept_and_handled_once(
    sentinel_topology: SentinelTopology,
    start_sentinel_worker: Callable[..., Worker],
    make_bus: Callable[..., EventBus],
) -> None:
    # Given the service registered, its worker stopped,
    start_sentinel_worker().stop()
    shop = make_bus()
    shop.registry.refresh()
    client = sentinel_topology.primary_client()
    # an event whose delivery to `ship` vanished from the queue (a worker popped it and died
    # before recording it: kombu pops, then records),
    result = shop.publish("order.shipped", {"n": 3})
    assert client.llen(QUEUE) == 1
    client.rpop(QUEUE)
    assert client.hlen("celery_events:ledger:sentinel_orders") == 1

    # When a worker runs again,
    start_sentinel_worker()

    # Then its sweeper finds the delivery in the ledger and sends it again: handled once.
    wait_until(lambda: effects(sentinel_topology), timeout=30, what="the lost delivery handled")
    wait_until(
        lambda: client.hlen("celery_events:ledger:sentinel_orders") == 0, what="ledger empty"
    )
    assert [(e["handler"], e["event_id"]) for e in effects(sentinel_topology)] == [
        ("ship", result.event.id)
    ]


def test_queue_status_reads_the_primary(
    sentinel_topology: SentinelTopology,
    start_sentinel_worker: Callable[..., Worker],
    make_bus: Callable[..., EventBus],
) -> None:
    start_sentinel_worker().stop()
    shop = make_bus()
    shop.registry.refresh()
    shop.publish("order.placed", {"n": 4})

    reader = shop.backend.transport.queue_reader(5.0)
    waiting, age = reader.waiting(QUEUE)
    assert waiting == 2
    assert age is not None and age >= 0


@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_registry_url_may_be_sentinel(
    sentinel_topology: SentinelTopology, sentinel_url: str, redis_url: str, broker: str
) -> None:
    # A registry (and, beside a broker that is not Redis, the state) on a Sentinel primary,
    # its master_name in the URL's query.
    url = redis_url if broker == "redis" else "amqp://guest:guest@127.0.0.1:1//"
    service = f"reg{uuid.uuid4().hex[:6]}"
    bus = EventBus(
        Celery(service, broker=url), service=service,
        registry_url=sentinel_topology.registry_url(),
    )
    bus.subscribe("order.placed", name="noted")(lambda event: None)
    try:
        bus.register()
        record = sentinel_topology.primary_client().get(f"celery_events:registry:{service}")
        assert record is not None
        assert json.loads(record)
        assert MASTER_NAME in bus.backend.description or "sentinel://" in bus.backend.description
    finally:
        bus.close()
