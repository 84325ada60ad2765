"""What ``wait_for_replicas`` (Redis ``WAIT``) costs a publish on Redis Sentinel (issue 12).

A private Sentinel topology (tests/sentinel_harness.py: one primary, one replica, three
sentinels on loopback; the nodes with AOF, fsync always) is the broker, the registry and the
state. Two buses publish to queues nobody consumes, one with ``wait_for_replicas=0`` (the
default: the publish returns once the primary ran the fan-out script) and one with
``wait_for_replicas=1`` (it returns once the replica holds the deliveries too), to 1 and to 10
subscribers. The variants take turns chunk by chunk in a rotating order; each publish is timed
on its own, and each figure is the median (p50) or 95th percentile of one repeat's publishes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from celery import Celery

from celery_events import EventBus, Subscription
from tests.sentinel_harness import MASTER_NAME, SENTINEL_OPTIONS, SentinelTopology, sentinel_binary

from ._stats import Section, Series, ratios
from .publish import _clean

FANOUT = 10
DATA = {"user_id": 7, "email": "someone@example.com", "plan": "pro"}


def available() -> bool:
    return sentinel_binary() is not None


def _bus(topology: SentinelTopology, replicas: int) -> EventBus:
    app = Celery(f"bench-sentinel-wait{replicas}", broker=topology.url)
    app.conf.broker_transport_options = dict(SENTINEL_OPTIONS)
    return EventBus(app, service=f"bench-sentinel-wait{replicas}", wait_for_replicas=replicas)


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def publish(smoke: bool) -> list[Section]:
    binary = sentinel_binary()
    assert binary is not None  # the caller checked available()
    topology = SentinelTopology(binary, replicas=1)
    topology.start()
    buses: list[EventBus] = []
    try:
        off, on = _bus(topology, 0), _bus(topology, 1)
        buses += [off, on]
        off.registry.register(
            "one", [Subscription("bench.one", "one", "one.handle", "events.one")]
        )
        for i in range(FANOUT):
            off.registry.register(
                f"s{i}", [Subscription("bench.ten", f"s{i}", f"s{i}.handle", f"events.s{i}")]
            )
        client = topology.primary_client()
        plan: dict[str, tuple[Callable[[], object], str]] = {
            "publish to 1, WAIT off": (lambda: off.publish("bench.one", DATA), "events.one"),
            "publish to 1, WAIT 1 replica": (lambda: on.publish("bench.one", DATA), "events.one"),
            "publish to 10, WAIT off": (lambda: off.publish("bench.ten", DATA), "events.s9"),
            "publish to 10, WAIT 1 replica": (lambda: on.publish("bench.ten", DATA), "events.s9"),
        }
        names = list(plan)
        times: dict[str, list[float]] = {}

        def chunk(name: str, ops: int) -> None:
            op, check = plan[name]
            for _ in range(ops):
                started = time.perf_counter()
                op()
                times[name].append((time.perf_counter() - started) * 1e6)
            queued = int(client.llen(check))
            if queued != ops:
                raise RuntimeError(f"expected {ops} messages on {check}, found {queued}")
            _clean(client)

        for name in names:  # warm-up: connections, scripts, the registry view
            times[name] = []
            chunk(name, 20)
        repeats, chunks, ops = (2, 2, 5) if smoke else (7, 10, 20)
        p50: dict[str, list[float]] = {name: [] for name in names}
        p95: dict[str, list[float]] = {name: [] for name in names}
        for repeat in range(repeats):
            for name in names:
                times[name] = []
            for c in range(chunks):
                shift = (repeat * chunks + c) % len(names)
                for name in names[shift:] + names[:shift]:
                    chunk(name, ops)
            for name in names:
                p50[name].append(statistics.median(times[name]))
                p95[name].append(_p95(times[name]))
    finally:
        for bus in buses:
            bus.close()
        topology.stop()
    figures = [Series(f"{name}, p50", "µs", p50[name]) for name in names]
    figures += [Series(f"{name}, p95", "µs", p95[name]) for name in names]
    figures += [
        Series(f"WAIT 1 ÷ WAIT off, publish to {n}, p50", "×", ratios(p50[on_], p50[off_]))
        for n, off_, on_ in ((1, names[0], names[1]), (FANOUT, names[2], names[3]))
    ]
    return [
        Section(
            title="Sentinel publish, with and without WAIT",
            setup=(
                f"Time of one publish on Redis Sentinel (`{MASTER_NAME}`: a primary, one replica,"
                " three sentinels; AOF with fsync always), `wait_for_replicas` 0 and 1, queues"
                f" not consumed; p50 and p95 of each repeat's {chunks * ops} publishes per"
                " variant."
            ),
            figures=figures,
        )
    ]
