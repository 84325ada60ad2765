"""Publisher memory: RSS growth over 100,000 publishes (target 6).

A fresh Python process (``python -m benchmarks.memory URL COUNT``) publishes to one subscriber,
cycling through 20 event names with data that changes every time, with task-sent events on.
Its resident set size is read after a warm-up of 5,000 publishes (500 in a smoke run) and again at the end; the
queue is emptied every 10,000 publishes so that the server's memory stays small.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import redis

from ._stats import Section, Series, Target

WARM_UP = 5_000


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(url: str, count: int, warm_up: int) -> None:
    import gc

    from celery import Celery

    from celery_events import EventBus, Subscription

    app = Celery("bench-memory", broker=url)
    app.conf.task_send_sent_event = True
    bus = EventBus(app, service="memory")
    bus.registry.register("sink", [Subscription("mem.#", "sink", "sink.handle", "events.sink")])
    client = redis.Redis.from_url(url)
    names = [f"mem.kind{i}.happened" for i in range(20)]
    before = 0
    for i in range(warm_up + count):
        if i == warm_up:
            gc.collect()
            before = rss_bytes()
        bus.publish(names[i % 20], {"n": i, "text": "x" * (i % 100)})
        if i % 10_000 == 0:
            client.delete("events.sink", "celery_events:ledger:sink", "celery_events:ledger:sink:due")
    gc.collect()
    after = rss_bytes()
    client.delete("events.sink", "celery_events:ledger:sink", "celery_events:ledger:sink:due")
    bus.close()
    print(json.dumps({"before": before, "after": after}))


def run(url: str, client: redis.Redis, smoke: bool) -> list[Section]:
    count = 2_000 if smoke else 100_000
    warm_up = 500 if smoke else WARM_UP
    repeats = 1 if smoke else 3
    growth, start = [], []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", url, str(count), str(warm_up)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        result = json.loads(out.strip().splitlines()[-1])
        growth.append((result["after"] - result["before"]) / 2**20)
        start.append(result["before"] / 2**20)
    section = Section(
        title=f"Publisher memory over {count:,} publishes",
        setup=(
            f"Resident set size of a fresh publisher process after {warm_up:,} warm-up"
            f" publishes, then after {count:,} more (20 names, task-sent events on), in"
            f" {repeats} separate process{'es' if repeats > 1 else ''}."
        ),
        figures=[Series("RSS after warm-up", "MB", start), Series("RSS growth", "MB", growth)],
    )
    series = section.figures[1]
    section.targets = [
        Target(f"6. RSS growth over {count:,} publishes", series, "< 5 MB", series.median < 5)
    ]
    return [section]


if __name__ == "__main__":
    child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
