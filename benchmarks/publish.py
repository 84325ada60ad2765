"""Publish cost: celery-events against raw ``app.send_task`` and celery-pubsub (targets 1, 2).

One Celery app publishes in this process to queues nobody consumes: one subscriber, then ten
subscribing services (ten queues). Raw Celery sends the same envelope with ``send_task``;
celery-pubsub publishes it to ten subscribed tasks on ten queues. Within each repeat the variants
take turns in short chunks (about 10 ms of work each, 25 chunks, rotating order), and every
ratio is taken between figures of the same repeat. Each figure
is the time of one event, all its deliveries included. Run twice: with Celery's
``task_send_sent_event`` off, and on (the ``task-sent`` events Flower uses).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import celery_pubsub
import redis
from celery import Celery

from celery_events import Event, EventBus, Subscription

from ._stats import Section, Series, Target, chunked, ratios

FANOUT = 10


def _noop(*args: Any, **kwargs: Any) -> None:
    """What celery-pubsub's subscribed tasks would run (never, here: nobody consumes)."""


def _clean(client: redis.Redis) -> None:
    """Drop every queue and ledger record the variants wrote (outside the timed part)."""
    for pattern in ("events.*", "pubsub.*", "celery_events:ledger:*", "celery_events:trace*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)


def _chunk(client: redis.Redis, ops: int, op: Callable[[], Any], check: Callable[[], int]) -> float:
    """Run ``op`` ``ops`` times; return the seconds it took. Checks and cleans, untimed."""
    started = time.perf_counter()
    for _ in range(ops):
        op()
    elapsed = time.perf_counter() - started
    queued = check()
    if queued != ops:
        raise RuntimeError(f"expected {ops} messages on the checked queue, found {queued}")
    _clean(client)
    return elapsed


def compare_publishes(
    client: redis.Redis,
    plan: dict[str, Callable[[], Any]],
    check: Callable[[], int],
    smoke: bool,
) -> dict[str, list[float]]:
    """Seconds per publish of each variant of ``plan`` (name -> one publish), interleaved in
    chunks of 30 after a warm-up; ``check`` counts the messages on one subscriber's queue."""
    for variant in plan.values():  # warm-up: connections, scripts, caches
        _chunk(client, 20, variant, check)
    repeats, chunks = (2, 2) if smoke else (15, 25)
    return chunked(
        {
            name: ((lambda ops, v=variant: _chunk(client, ops, v, check)), 30)
            for name, variant in plan.items()
        },
        repeats,
        chunks,
    )


def publish_to_ten(
    client: redis.Redis,
    buses: dict[str, EventBus],
    name: str,
    data: dict[str, Any],
    prefix: str,
    smoke: bool,
) -> dict[str, list[float]]:
    """Seconds per publish of ``name`` with ``data`` by each bus of ``buses`` (label -> bus),
    to ``FANOUT`` subscribers ``{prefix}0``... recorded now; the buses are closed after."""
    registry = next(iter(buses.values())).registry
    for i in range(FANOUT):
        service = f"{prefix}{i}"
        registry.register(
            service, [Subscription(name, service, f"{service}.handle", f"events.{service}")]
        )
    last = f"events.{prefix}{FANOUT - 1}"

    def llen() -> int:
        return int(client.llen(last))

    def op(bus: EventBus) -> Callable[[], Any]:
        return lambda: bus.publish(name, data)

    try:
        return compare_publishes(client, {label: op(bus) for label, bus in buses.items()}, llen, smoke)
    finally:
        for bus in buses.values():
            bus.close()


def run_mode(url: str, client: redis.Redis, *, sent_events: bool, smoke: bool) -> Section:
    mode = "on" if sent_events else "off"
    app = Celery(f"bench-publisher-{mode}", broker=url)
    app.conf.task_send_sent_event = sent_events
    bus = EventBus(app, service=f"publisher-{mode}")
    bus.registry.register("one", [Subscription("bench.one", "one", "one.handle", "events.one")])
    for i in range(FANOUT):
        bus.registry.register(
            f"s{i}", [Subscription("bench.ten", f"s{i}", f"s{i}.handle", f"events.s{i}")]
        )
    topic = f"bench.pubsub.{mode}"
    pubsub_tasks = [
        app.task(name=f"pubsub.h{i}", queue=f"pubsub.q{i}", shared=False)(_noop)
        for i in range(FANOUT)
    ]
    for task in pubsub_tasks:
        celery_pubsub.subscribe(topic, task)

    data = {"user_id": 7, "email": "someone@example.com", "plan": "pro"}
    envelope = Event.create("bench.one", data, source="publisher").to_envelope()

    def raw_1() -> None:
        app.send_task("one.handle", args=[envelope], kwargs={}, queue="events.one")

    def raw_10() -> None:
        for i in range(FANOUT):
            app.send_task(f"s{i}.handle", args=[envelope], kwargs={}, queue=f"events.s{i}")

    def pubsub_10() -> None:
        celery_pubsub.publish(topic, envelope)

    def ours_1() -> None:
        bus.publish("bench.one", data)

    def ours_10() -> None:
        bus.publish("bench.ten", data)

    def llen(queue: str) -> Callable[[], int]:
        return lambda: int(client.llen(queue))

    # Operations per chunk: about 10 ms of work each.
    plan = {
        "raw send_task, 1 queue": (raw_1, 30, llen("events.one")),
        "celery-events publish, 1 subscriber": (ours_1, 60, llen("events.one")),
        "raw send_task × 10 queues": (raw_10, 3, llen("events.s9")),
        "celery-pubsub publish, 10 subscribers": (pubsub_10, 3, llen("pubsub.q9")),
        "celery-events publish, 10 subscribers": (ours_10, 30, llen("events.s9")),
    }
    names = list(plan)
    for op, _, check in plan.values():  # warm-up: connections, scripts, caches
        _chunk(client, 20, op, check)
    repeats, chunks = (2, 2) if smoke else (15, 25)

    def runner(op: Callable[[], Any], check: Callable[[], int]) -> Callable[[int], float]:
        return lambda ops: _chunk(client, ops, op, check)

    results = chunked(
        {name: (runner(op, check), ops) for name, (op, ops, check) in plan.items()},
        repeats,
        chunks,
    )

    for task in pubsub_tasks:
        celery_pubsub.unsubscribe(topic, task)
    bus.close()

    raw1, ours1, raw10, pubsub10, ours10 = (results[name] for name in names)
    section = Section(
        title=f"Publish, task-sent events {mode}",
        setup=(
            f"Time per published event (`task_send_sent_event = {sent_events}`), queues not"
            " consumed; celery-events writes its delivery ledger in the same script."
        ),
        figures=[Series(name, "µs", results[name]) for name in names],
    )
    t1 = Series("publish to 1 ÷ one raw send_task", "×", ratios(ours1, raw1))
    t2a = Series("10 raw send_task ÷ publish to 10", "×", ratios(raw10, ours10))
    t2b = Series("celery-pubsub to 10 ÷ publish to 10", "×", ratios(pubsub10, ours10))
    t2c = Series("publish to 10 ÷ one raw send_task", "×", ratios(ours10, raw1))
    section.targets = [
        Target("1. " + t1.name, t1, "≤ 0.5×", t1.median <= 0.5),
        Target("2. " + t2a.name, t2a, "≥ 6×", t2a.median >= 6),
        Target("2. " + t2b.name, t2b, "≥ 6×", t2b.median >= 6),
        Target("2. " + t2c.name, t2c, "≤ 1.0×", t2c.median <= 1.0),
    ]
    return section


def run(url: str, client: redis.Redis, smoke: bool) -> list[Section]:
    return [
        run_mode(url, client, sent_events=False, smoke=smoke),
        run_mode(url, client, sent_events=True, smoke=smoke),
    ]
