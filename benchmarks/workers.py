"""Worker throughput and end-to-end latency against raw Celery (targets 3 and 4).

Both run ``celery -A benchmarks.service worker -c 1 -E --without-mingle --without-gossip -l
info -Q bench.raw`` (the bus adds its own queue ``events.bench``): one prefork process, task
events on, the same command for both variants. Handlers run with the inbox on (the default).

- Throughput: 10,000 deliveries, or 10,000 no-op tasks sent with ``send_task``, are queued
  first; then a worker starts and drains them. The rate is taken between the start of the
  first task and the end of the last, as the tasks themselves record it. Variants alternate.
- Latency: a worker runs; events are published at 200 per second, alternating event by event
  between ``send_task`` and ``bus.publish``; each task records the time from just before its
  publish call to the start of its function (the handler, for celery-events).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from celery_events import Event, EventBus, Subscription
from tests.harness import ROOT

from ._env import WorkerProcess
from ._keys import FIRST_KEY, LAST_KEY, RAW_QUEUE, READY_KEY, SOURCE_KEY
from ._stats import Section, Series, Target, interleaved, ratios

WORKER_ARGS = [
    "-l", "info", "-c", "1", "-E", "--without-mingle", "--without-gossip", "-Q", RAW_QUEUE,
]
SUBSCRIPTIONS = [
    Subscription("bench.drain", "bench", "bench.drain", "events.bench"),
    Subscription("bench.latency", "bench", "bench.latency", "events.bench"),
]


def _publisher(url: str, name: str) -> tuple[Celery, EventBus]:
    app = Celery(name, broker=url)
    app.conf.task_send_sent_event = True
    bus = EventBus(app, service=name)
    bus.registry.register("bench", SUBSCRIPTIONS)
    return app, bus


def _wait(client: redis.Redis, worker: WorkerProcess, condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        worker.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out; worker log at {worker.log_path}")
        time.sleep(0.05)


def drain_queued(
    url: str,
    client: redis.Redis,
    count: int,
    fill: Callable[[], Any],
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> float:
    """Queue ``count`` tasks with ``fill``, then start a worker, let it drain them, stop it.

    Returns the tasks per second between the start of the first task and the end of the last,
    as the tasks record them (``client`` is on the database of ``url``). ``env`` and ``cwd``
    choose the worker's ``celery_events`` and ``benchmarks.service`` (see ``WorkerProcess``).
    """
    client.delete(FIRST_KEY, LAST_KEY, SOURCE_KEY)
    fill()
    worker = WorkerProcess(url, WORKER_ARGS, {"BENCH_COUNT": str(count), **(env or {})}, cwd)
    try:
        _wait(client, worker, lambda: client.exists(LAST_KEY), timeout=900)
    finally:
        worker.stop()
    first, last = float(client.get(FIRST_KEY)), float(client.get(LAST_KEY))
    left = client.llen(RAW_QUEUE) + client.llen("events.bench")
    if left:
        raise RuntimeError(f"{left} messages left on the queues after the drain")
    return (count - 1) / (last - first)


def throughput(url: str, client: redis.Redis, smoke: bool) -> list[Section]:
    count = 200 if smoke else 10_000
    app, bus = _publisher(url, "bench-feeder")
    data = {"user_id": 7, "email": "someone@example.com", "plan": "pro"}
    envelope = Event.create("bench.drain", data, source="bench-feeder").to_envelope()

    def drain(fill: Any) -> float:
        return drain_queued(url, client, count, fill)

    def raw() -> float:
        def fill() -> None:
            for _ in range(count):
                app.send_task("bench.noop", args=[envelope], kwargs={}, queue=RAW_QUEUE)

        return drain(fill)

    def ours() -> float:
        def fill() -> None:
            for i in range(count):
                bus.publish("bench.drain", {**data, "n": i})

        return drain(fill)

    results = interleaved(
        {"raw no-op tasks": raw, "celery-events deliveries": ours}, repeats=1 if smoke else 4
    )
    bookkeeping = _bookkeeping(bus, 200 if smoke else 2000, repeats=2 if smoke else 5)
    bus.close()
    raw_rates, our_rates = results["raw no-op tasks"], results["celery-events deliveries"]
    extra = [(1 / o - 1 / r) * 1e3 for o, r in zip(our_rates, raw_rates, strict=True)]
    section = Section(
        title=f"Worker throughput, {count:,} queued",
        setup=(
            "Tasks per second of one worker process (`-c 1 -E`, prefork) draining a full queue;"
            " deliveries run their handler with the inbox on."
        ),
        figures=[
            Series("raw no-op tasks", "tasks/s", raw_rates),
            Series("celery-events deliveries", "tasks/s", our_rates),
            Series("extra time per delivery", "ms", extra),
            Series("inbox claim + succeed (2 round trips), timed apart", "ms", bookkeeping),
        ],
    )
    ratio = Series("deliveries ÷ raw no-op tasks", "×", ratios(our_rates, raw_rates))
    section.targets = [
        Target("3. " + ratio.name, ratio, "≥ 0.85×", ratio.median >= 0.85),
        Target("16. " + ratio.name, ratio, "≥ 1.0×", ratio.median >= 1.0),
    ]
    return [section]


def _bookkeeping(bus: EventBus, count: int, repeats: int) -> list[float]:
    """Time the two Redis calls every delivery makes around its handler (see backends/redis/inbox.py)."""
    from celery_events._messages import new_ids
    from celery_events.backends.base import lease_value

    inbox = bus.inbox
    process = inbox.process_token()
    results = []
    for _ in range(repeats):
        ids = new_ids(count)
        at = time.time()
        started = time.perf_counter()
        for task_id in ids:
            lease = lease_value(task_id, process)
            inbox.claim(
                "bench.drain", task_id, task_id, event_time=at, lease=lease, lease_seconds=300,
                use_inbox=True,
            )
            inbox.succeed(
                "bench.drain", task_id, task_id, event_time=at, lease=lease, use_inbox=True,
                ttl_seconds=60,
            )
        results.append((time.perf_counter() - started) / count * 1e3)
    return results


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(url: str, client: redis.Redis, smoke: bool) -> list[Section]:
    rate = 200
    per_block = 40 if smoke else 1000
    repeats = 1 if smoke else 6
    app, bus = _publisher(url, "bench-latency")
    keys = {kind: f"bench:latency:{kind}" for kind in ("raw", "ours")}
    client.delete(READY_KEY)
    worker = WorkerProcess(url, WORKER_ARGS)
    blocks: dict[str, list[list[float]]] = {"raw": [], "ours": []}
    try:
        _wait(client, worker, lambda: client.exists(READY_KEY), timeout=60)

        def block(first: int) -> None:
            # One stream of events at `rate` per second in which the variants alternate
            # event by event, so both see the same worker and the same machine.
            client.delete(*keys.values())
            start = time.perf_counter()
            for i in range(per_block):
                pause = start + i / rate - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                data = {"sent": time.time(), "i": i}
                if (i + first) % 2 == 0:
                    envelope = Event.create("bench.latency", data, source="raw").to_envelope()
                    app.send_task("bench.raw_latency", args=[envelope], kwargs={}, queue=RAW_QUEUE)
                else:
                    bus.publish("bench.latency", data)
            expected = per_block // 2
            _wait(
                client,
                worker,
                lambda: all(client.llen(key) >= expected for key in keys.values()),
                timeout=120,
            )
            for kind, key in keys.items():
                blocks[kind].append([float(v) * 1e3 for v in client.lrange(key, 0, -1)])

        block(0)  # warm-up, not counted
        blocks["raw"].clear(), blocks["ours"].clear()
        for repeat in range(repeats):
            block(repeat % 2)
    finally:
        worker.stop()
        bus.close()

    def series(kind: str, q: float) -> Series:
        label = f"{'raw send_task' if kind == 'raw' else 'celery-events publish'} p{int(q * 100)}"
        return Series(label, "ms", [_percentile(b, q) for b in blocks[kind]])

    figures = [series(k, q) for q in (0.5, 0.99) for k in ("raw", "ours")]
    section = Section(
        title=f"End-to-end latency at {rate} events/s",
        setup=(
            f"Publish call to task start (handler start for celery-events), one worker (`-c 1"
            f" -E`); {repeats} runs of {per_block} events at {rate}/s, the two variants"
            " alternating event by event; percentiles per run, figures over runs."
        ),
        figures=figures,
    )
    p50 = Series("p50 ÷ raw p50", "×", ratios(figures[1].values, figures[0].values))
    p99 = Series("p99 ÷ raw p99", "×", ratios(figures[3].values, figures[2].values))
    section.targets = [
        Target("4. latency " + p50.name, p50, "≤ 1.2×", p50.median <= 1.2),
        Target("4. latency " + p99.name, p99, "≤ 1.2×", p99.median <= 1.2),
    ]
    return [section]
