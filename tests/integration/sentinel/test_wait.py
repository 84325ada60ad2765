"""``wait_for_replicas``: a publish returns once a replica holds its deliveries (``WAIT``),
and says so when none did in time; what the wait costs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest

from celery_events import EventBus, NotReplicatedError

from .conftest import SentinelTopology

QUEUE = "events.waited"


@pytest.fixture
def subscribed(make_bus: Callable[..., EventBus]) -> None:
    """Service ``waited`` subscribes to ``order.#`` with three handlers (no worker runs)."""
    waited = make_bus("waited")
    for name in ("ship", "bill", "audit"):
        waited.subscribe("order.#", name=name)(lambda event: None)
    waited.register()


def test_a_publish_returns_once_the_replica_holds_its_deliveries(
    sentinel_topology: SentinelTopology, make_bus: Callable[..., EventBus], subscribed: None
) -> None:
    shop = make_bus(wait_for_replicas=1)
    shop.registry.refresh()
    replica = sentinel_topology.replicas()[0].client()

    for n in range(1, 21):
        shop.publish("order.placed", {"n": n})
        # Read on the replica right after the publish returned: WAIT made it hold them.
        assert replica.llen(QUEUE) == 3 * n


def test_without_a_replica_the_publish_says_the_deliveries_are_queued_but_not_replicated(
    sentinel_topology: SentinelTopology, make_bus: Callable[..., EventBus], subscribed: None
) -> None:
    shop = make_bus(wait_for_replicas=1, wait_for_replicas_timeout=0.2)
    shop.registry.refresh()
    sentinel_topology.replicas()[0].stop(kill=True)  # the fixture restarts it for the next test

    event = shop.new_event("order.placed", {"n": 1})
    started = time.monotonic()
    with pytest.raises(NotReplicatedError) as raised:
        shop.publish_event(event)

    assert time.monotonic() - started < 1.0
    assert (raised.value.acknowledged, raised.value.wanted) == (0, 1)
    assert "queued on the Redis primary" in str(raised.value)
    assert "publish the same event again" in str(raised.value)
    # The deliveries are on the primary, as the message says.
    assert sentinel_topology.primary_client().llen(QUEUE) == 3


def _publish_ms(bus: EventBus, n: int) -> float:
    started = time.perf_counter()
    bus.publish("order.placed", {"n": n})
    return (time.perf_counter() - started) * 1000


def test_what_waiting_for_a_replica_costs(
    sentinel_topology: SentinelTopology, make_bus: Callable[..., EventBus], subscribed: None
) -> None:
    plain = make_bus()
    waiting = make_bus("shop_waiting", wait_for_replicas=1)
    for bus in (plain, waiting):
        bus.registry.refresh()
        for n in range(50):  # warm: connections, scripts
            _publish_ms(bus, n)

    # Interleaved, so that the other processes on the machine weigh on both alike.
    without, with_wait = [], []
    for n in range(400):
        without.append(_publish_ms(plain, n))
        with_wait.append(_publish_ms(waiting, n))
    p50, p50_wait = statistics.median(without), statistics.median(with_wait)

    print(
        f"\npublish to 3 subscribers over Sentinel, p50: {p50:.3f} ms without WAIT,"
        f" {p50_wait:.3f} ms with wait_for_replicas=1 (+{p50_wait - p50:.3f} ms)"
    )
    # WAIT rides in the script's packet: one replica round trip on loopback, not a second
    # client round trip plus a timeout.
    assert p50_wait < p50 + 5.0
