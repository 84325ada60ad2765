"""Direct against relayed publishes on RabbitMQ: publish p50 and the publish -> queue latency.

``python -m benchmarks.amqp_relay [--rounds 10 --per 40]`` starts a private RabbitMQ node and
Redis (tests/harness.py), registers 1, 10 and 100 subscriptions, starts one relay-only
``celery worker`` (tests/services/relayed.py with no handler) and publishes, in interleaved
rounds, with ``bus.publish`` to 1, 10 and 100 subscribers directly and to 10 and 100 through
the relay (``relay_fanout_above=1``). For each publish it records how long ``publish`` took
(confirm included) and how long until the copy reached one subscriber's queue (a raw consumer
on it, in this process): the hop the relay adds is the difference. Celery's own handling of
the copy (the same in both paths) is not in it.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import amqp
from celery import Celery

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from celery_events import EventBus  # noqa: E402
from celery_events.backends.amqp.topology import delivery_id  # noqa: E402
from tests.conftest import WORKER_ARGS  # noqa: E402
from tests.harness import (  # noqa: E402
    RabbitMQServer,
    RedisServer,
    Worker,
    rabbitmq_server_binary,
    redis_server_binary,
)

WIDTHS = (1, 10, 100)


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per", type=int, default=40)
    parser.add_argument("--no-task-events", action="store_true",
                        help="publishers send no task-sent events (Flower's rows)")
    args = parser.parse_args()
    rabbit_binary, redis_binary = rabbitmq_server_binary(), redis_server_binary()
    assert rabbit_binary and redis_binary, "needs rabbitmq-server and redis-server"
    rabbit = RabbitMQServer(rabbit_binary)
    rabbit.start()
    redis_server = RedisServer(redis_binary, persistent=False)
    redis_server.start()
    state = f"redis://127.0.0.1:{redis_server.port}/0"
    workers: list[Worker] = []
    buses: list[EventBus] = []
    try:
        subscribers = {}
        for n in WIDTHS:
            bus = EventBus(Celery(f"m{n}", broker=rabbit.url), service=f"m{n}",
                           registry_url=state)
            for i in range(n):
                bus.subscribe(f"m{n}.ev", name=f"h{i}")(lambda event: None)
            bus.register()
            buses.append(bus)
            subscribers[n] = f"events.m{n}.h{n - 1}"
        env = {**os.environ, "CELERY_EVENTS_TEST_BROKER": rabbit.url,
               "CELERY_EVENTS_TEST_STATE": state, "RELAY_SERVICE": "relayer",
               "RELAY_HANDLERS": "0"}
        log_dir = Path(rabbit.dir)
        workers.append(
            Worker("tests.services.relayed", env, [*WORKER_ARGS, "-n", "relayer@%h"], log_dir)
            .wait_ready(60)
        )
        direct = EventBus(Celery("pub", broker=rabbit.url), service="pub",
                          registry_url=state, relay_fanout_above=None,
                          task_events=not args.no_task_events)
        relayed = EventBus(Celery("pub", broker=rabbit.url), service="pub",
                           registry_url=state, relay_fanout_above=1,
                           task_events=not args.no_task_events)
        buses += [direct, relayed]
        for bus in (direct, relayed):  # first publishes declare queues: not measured
            for n in WIDTHS:
                bus.publish(f"m{n}.ev", {})
        host = rabbit.url.split("@", 1)[1].split("/", 1)[0]
        watcher = amqp.Connection(host=host)
        watcher.connect()
        channel = watcher.channel()
        arrived: dict[str, float] = {}

        def on_copy(message: Any) -> None:
            arrived[message.headers["id"]] = time.perf_counter()

        for queue in subscribers.values():
            channel.basic_consume(queue, callback=on_copy, no_ack=True)
        variants = [("direct", 1), ("direct", 10), ("relay", 10), ("direct", 100),
                    ("relay", 100)]
        publish_ms: dict[tuple[str, int], list[float]] = {v: [] for v in variants}
        hop_ms: dict[tuple[str, int], list[float]] = {v: [] for v in variants}
        for _ in range(args.rounds):
            random.shuffle(variants)
            for kind, n in variants:
                bus = direct if kind == "direct" else relayed
                for _ in range(args.per):
                    started = time.perf_counter()
                    result = bus.publish(f"m{n}.ev", {"x": uuid.uuid4().hex})
                    publish_ms[kind, n].append((time.perf_counter() - started) * 1000)
                    wanted = next(d.task_id for d in result.deliveries
                                  if d.queue == subscribers[n])
                    handler = f"m{n}.h{n - 1}"
                    shared = None
                    deadline = time.monotonic() + 10
                    while shared is None and time.monotonic() < deadline:
                        for key in list(arrived):
                            if delivery_id(key, handler) == wanted:
                                shared = arrived.pop(key)
                        if shared is None:
                            watcher.drain_events(timeout=10)
                    assert shared is not None, f"no copy of {wanted} arrived"
                    hop_ms[kind, n].append((shared - started) * 1000)
            for n in subscribers:  # the other queues fill up: empty them
                for i in range(n - 1):
                    channel.queue_purge(f"events.m{n}.h{i}")
        print(f"{'variant':<12}{'publish p50':>12}{'p95':>8}{'to queue p50':>14}{'p95':>8}")
        for kind, n in sorted(publish_ms, key=lambda v: (v[1], v[0])):
            p, h = publish_ms[kind, n], hop_ms[kind, n]
            print(f"{kind + ' ' + str(n):<12}{statistics.median(p):>12.2f}{_pct(p, 0.95):>8.2f}"
                  f"{statistics.median(h):>14.2f}{_pct(h, 0.95):>8.2f}")
        print(f"load average: {os.getloadavg()}")
        watcher.close()
    finally:
        for bus in buses:
            bus.close()
        for worker in workers:
            worker.stop()
        redis_server.stop()
        rabbit.stop()


if __name__ == "__main__":
    main()
