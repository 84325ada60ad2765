"""A primary killed (``kill -9``) in the middle of a stream of events: the sentinels promote
the replica, publishing goes on after a bounded pause, and every event is handled exactly once
by a real worker that rode through the failover."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

from celery_events import EventBus, NotReplicatedError, PublishError

from ...harness import Worker, wait_until
from .conftest import SentinelTopology, effects

EVENTS = 120
KILL_AT = 40
#: The longest publishing may pause after the primary dies (the issue's bound).
RECOVERY_BOUND = 10.0


def _restart_as_replica_after_failover(topology: SentinelTopology, old: object) -> threading.Thread:
    """As a supervisor would: once the sentinels promoted the replica, start the killed node
    again, as a replica of the new primary (so WAIT has a replica to count again)."""

    def run() -> None:
        new = topology.wait_failover(old)  # type: ignore[arg-type]
        old.process = None  # type: ignore[attr-defined]
        topology._start_replica(old, new.port)  # type: ignore[arg-type]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _missing(topology: SentinelTopology, expected: set[tuple[str, str]]) -> str:
    """What became of the deliveries not handled, for the failure message."""
    client = topology.primary_client()
    seen = {(e["handler"], e["event_id"]) for e in effects(topology)}
    missing = sorted(expected - seen)
    ledger = client.hgetall("celery_events:ledger:sentinel_orders")
    return (
        f"{len(missing)} of {len(expected)} deliveries never handled, e.g. {missing[:3]};"
        f" queue {client.llen('events.sentinel_orders')}, unacked {client.hlen('unacked')},"
        f" ledger {len(ledger)} {list(ledger.values())[:2]!r:.600}"
    )


@pytest.mark.parametrize("wait_for_replicas", [0, 1], ids=["no-wait", "wait-1"])
def test_publishing_recovers_after_the_primary_is_killed(
    sentinel_topology: SentinelTopology,
    start_sentinel_worker: Callable[..., Worker],
    make_bus: Callable[..., EventBus],
    wait_for_replicas: int,
) -> None:
    # Given a worker consuming and a publisher on the Sentinel topology,
    worker = start_sentinel_worker()
    shop = make_bus(
        wait_for_replicas=wait_for_replicas, wait_for_replicas_timeout=0.5, publish_timeout=2.0
    )
    shop.registry.refresh()
    acknowledged: list[str] = []
    killed_at: float | None = None
    recovered_at: float | None = None
    refusals: Counter[str] = Counter()
    restarter = None

    # When the primary is killed after KILL_AT events, and publishing goes on,
    for n in range(EVENTS):
        if n == KILL_AT:
            old = sentinel_topology.kill_primary()
            killed_at = time.monotonic()
            if wait_for_replicas:
                restarter = _restart_as_replica_after_failover(sentinel_topology, old)
        event = shop.new_event("order.placed", {"n": n})
        while True:
            try:
                shop.publish_event(event)
                break
            except NotReplicatedError:
                # Queued on the primary, not yet on a replica: the same event again is safe.
                refusals["not replicated"] += 1
            except PublishError:
                refusals["unreachable"] += 1
            assert killed_at is not None, "a publish failed before the primary was killed"
            assert time.monotonic() - killed_at < RECOVERY_BOUND, (
                f"publishing did not recover within {RECOVERY_BOUND} s ({dict(refusals)})"
            )
            time.sleep(0.05)
        if killed_at is not None and recovered_at is None:
            recovered_at = time.monotonic()
        acknowledged.append(event.id)

    assert killed_at is not None and recovered_at is not None
    pause = recovered_at - killed_at
    print(
        f"\nwait_for_replicas={wait_for_replicas}: publishing paused {pause:.2f} s after the"
        f" primary was killed; refused attempts: {dict(refusals)}"
    )
    assert pause < RECOVERY_BOUND
    if restarter is not None:
        restarter.join(timeout=20)

    # Then every acknowledged event is handled by each handler exactly once: none lost, none
    # twice (effects commit with their inbox records on the surviving primary).
    expected = {(handler, event_id) for event_id in acknowledged for handler in ("ship", "bill")}

    def done() -> bool:
        return {(e["handler"], e["event_id"]) for e in effects(sentinel_topology)} >= expected

    try:
        wait_until(done, timeout=45, interval=0.2, what="every acknowledged event handled")
    except AssertionError:
        raise AssertionError(_missing(sentinel_topology, expected)) from None
    counts = Counter((e["handler"], e["event_id"]) for e in effects(sentinel_topology))
    assert set(counts) == expected
    assert [key for key, count in counts.items() if count > 1] == []
    assert worker.process.poll() is None, "the worker died in the failover"

    # And the worker still consumes through the screening transport after the failover (kombu
    # switches transports at a failover unless the scheme names ours): an unreadable item on
    # the new primary becomes a dead letter.
    ops = make_bus("sentinel_orders")
    sentinel_topology.primary_client().lpush("events.sentinel_orders", b"not json")
    letters = wait_until(
        lambda: [x for x in ops.dead_letters.list() if x.raw == b"not json"],
        what="the unreadable item dead-lettered after the failover",
    )
    assert len(letters) == 1
