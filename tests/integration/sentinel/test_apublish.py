"""``await bus.apublish`` on ``sentinel://``: the asyncio client reaches the primary the
sentinels name, and ``wait_for_replicas`` waits as ``publish`` does."""

from __future__ import annotations

import asyncio
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


def test_apublish_reaches_the_primary_and_waits_for_the_replica(
    sentinel_topology: SentinelTopology, make_bus: Callable[..., EventBus], subscribed: None
) -> None:
    shop = make_bus(wait_for_replicas=1)
    shop.registry.refresh()
    replica = sentinel_topology.replicas()[0].client()

    async def main() -> list[int]:
        counts = []
        for n in range(1, 6):
            result = await shop.apublish("order.placed", {"n": n})
            # Read on the replica right after the await: WAIT made it hold them.
            counts.append(replica.llen(QUEUE))
            assert len(result.deliveries) == 3
        many = await shop.apublish_many([("order.placed", {"n": n}) for n in range(6, 11)])
        counts.append(replica.llen(QUEUE))
        assert [len(r.deliveries) for r in many] == [3] * 5
        await shop.aclose()
        return counts

    assert asyncio.run(main()) == [3, 6, 9, 12, 15, 30]
    assert sentinel_topology.primary_client().llen(QUEUE) == 30


def test_without_a_replica_apublish_raises_not_replicated(
    sentinel_topology: SentinelTopology, make_bus: Callable[..., EventBus], subscribed: None
) -> None:
    shop = make_bus(wait_for_replicas=1, wait_for_replicas_timeout=0.2)
    shop.registry.refresh()
    sentinel_topology.replicas()[0].stop(kill=True)  # the fixture restarts it for the next test

    with pytest.raises(NotReplicatedError) as raised:
        asyncio.run(shop.apublish("order.placed", {"n": 1}))

    assert (raised.value.acknowledged, raised.value.wanted) == (0, 1)
    assert sentinel_topology.primary_client().llen(QUEUE) == 3
