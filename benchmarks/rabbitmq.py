"""Publish cost and worker throughput on RabbitMQ, against raw Celery in the same run (issue 12).

A private RabbitMQ node (``PrivateRabbitMQ``) is the broker; the private Redis of the run holds
the registry (``registry_url``) and the figures' bookkeeping. Publisher confirms are on
(``broker_transport_options={"confirm_publish": True}``) for raw Celery and for the bus alike.

- Publish: one Celery app publishes to queues nobody consumes: raw ``send_task`` to one queue,
  and the bus's publish to 1, 10 and 100 subscribing services (their own queues). The variants
  take turns chunk by chunk in a rotating order (``chunked``); a chunk is sized from a warm-up
  to about 20 ms of work (at least one publish), so that a slow variant (100 confirmed
  publishes) does not stretch the run. A chunk is timed until the variant's last queue holds
  one message per publish (a relayed publish returns before the broker has made its 100
  copies, work the publisher meets in its next publishes); then the variant's queues are
  purged. Targets: publish to 10 at most 1.5x one raw ``send_task``, publish to 100 at most 3x
  publish to 1.
- Throughput: as ``workers.throughput`` on Redis: deliveries, or raw no-op tasks, are queued
  first, then one worker (``-c 1 -E``, prefork) drains them, the variants alternating.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery
from kombu import Connection

from celery_events import Event, EventBus

from ._env import WorkerProcess
from ._keys import FIRST_KEY, LAST_KEY, RAW_QUEUE, SOURCE_KEY
from ._stats import Section, Series, Target, chunked, interleaved, ratios
from .workers import SUBSCRIPTIONS, WORKER_ARGS

FANOUTS = (1, 10, 100)
#: Seconds of work per chunk, from the warm-up's estimate.
CHUNK_SECONDS = 0.02
CONFIRMS = {"confirm_publish": True}
DATA = {"user_id": 7, "email": "someone@example.com", "plan": "pro"}


def _event(n: int) -> str:
    return f"bench.rabbitmq.fanout{n}"


def _services(n: int) -> list[str]:
    return [f"rmq{n}s{i}" for i in range(n)]


def broker_queue(service: str, handler: str) -> str:
    """The RabbitMQ queue that ``service``'s handler ``handler`` is consumed from."""
    try:
        # The amqp backend gives every handler a queue of its own, named from the service's.
        from celery_events.backends.amqp.topology import handler_queue
    except ImportError:  # the kombu backend: the service's queue (queue_template)
        return f"events.{service}"
    return handler_queue(f"events.{service}", f"{service}.{handler}")


def _handle(event: Event) -> None:
    """Subscribed handlers never run here: nobody consumes these queues in this process."""


def subscriber(rabbit_url: str, redis_url: str, service: str, handlers: dict[str, str]) -> EventBus:
    """Record ``service``'s subscriptions as its workers would (``bus.register()``), with the
    queue arguments its backend gives them: ``handlers`` maps handler names to patterns."""
    bus = EventBus(Celery(f"bench-subscriber-{service}", broker=rabbit_url), service=service,
                   registry_url=redis_url)
    for name, pattern in handlers.items():
        bus.subscribe(pattern, name=name)(_handle)
    bus.register()
    return bus


class Queues:
    """Message counts and purges of RabbitMQ queues, over a connection of their own."""

    def __init__(self, url: str) -> None:
        self.connection = Connection(url)
        self.channel = self.connection.channel()

    def count(self, name: str) -> int:
        return int(self.channel.queue_declare(name, passive=True).message_count)

    def purge(self, names: list[str]) -> None:
        for name in names:
            self.channel.queue_purge(name)

    def close(self) -> None:
        self.connection.release()


def _app(url: str, name: str, sent_events: bool = False) -> Celery:
    app = Celery(name, broker=url)
    app.conf.broker_transport_options = CONFIRMS
    app.conf.task_send_sent_event = sent_events
    return app


def _expect(queues: Queues, name: str, expected: int, poll: float = 0.01) -> None:
    """Wait until the queue holds ``expected`` messages, read every ``poll`` seconds (a
    confirmed publish is counted at once; a relayed one once the relay's copy is routed), for
    at most 5 s."""
    deadline = time.monotonic() + 5
    while True:
        found = queues.count(name)
        if found == expected:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"expected {expected} messages on {name}, found {found}")
        time.sleep(poll)


def publish(rabbit_url: str, redis_url: str, client: redis.Redis, smoke: bool) -> list[Section]:
    app = _app(rabbit_url, "bench-rabbitmq-publisher")
    bus = EventBus(app, service="bench-rabbitmq-publisher", registry_url=redis_url)
    subscribers = [
        subscriber(rabbit_url, redis_url, service, {"handle": _event(n)})
        for n in FANOUTS
        for service in _services(n)
    ]
    queues_of = {n: [broker_queue(service, "handle") for service in _services(n)] for n in FANOUTS}
    envelope = Event.create(_event(1), DATA, source="bench").to_envelope()
    queues = Queues(rabbit_url)
    # Publishes to more than relay_fanout_above (25) subscribers go to the intake queue: a
    # worker's relay (every worker on RabbitMQ runs one) republishes them, as in a fleet.
    relayer = WorkerProcess(rabbit_url, RELAYER_ARGS, {"BENCH_STATE": redis_url})
    _wait(relayer, lambda: _log_says(relayer, "ready"), timeout=120)

    def raw() -> None:
        app.send_task("bench.noop", args=[envelope], kwargs={}, queue=RAW_QUEUE)

    def ours(n: int) -> Callable[[], None]:
        return lambda: bus.publish(_event(n), DATA)

    plan: dict[str, tuple[Callable[[], None], str, list[str]]] = {
        "raw send_task with confirms, 1 queue": (raw, RAW_QUEUE, [RAW_QUEUE]),
    }
    for n in FANOUTS:
        label = f"celery-events publish, {n} subscriber{'s' if n > 1 else ''}"
        plan[label] = (ours(n), queues_of[n][-1], queues_of[n])

    def chunk(op: Callable[[], None], check: str, purge: list[str]) -> Callable[[int], float]:
        def run(ops: int) -> float:
            started = time.perf_counter()
            for _ in range(ops):
                op()
            # Timed until the last subscriber's queue holds every event: a relayed publish
            # returns once the intake has it, and the broker's copies to the 100 queues come
            # after (as a publisher sending without pause meets them, in its next publishes).
            _expect(queues, check, ops, poll=0.001)
            elapsed = time.perf_counter() - started
            queues.purge(purge)
            return elapsed

        return run

    variants: dict[str, tuple[Callable[[int], float], int]] = {}
    for name, (op, check, purge) in plan.items():
        run = chunk(op, check, purge)
        run(3)  # connections, declarations, the registry view
        per_op = run(5) / 5
        variants[name] = (run, max(1, round(CHUNK_SECONDS / per_op)))
    repeats, chunks = (2, 2) if smoke else (9, 6)
    try:
        results = chunked(variants, repeats, chunks)
    finally:
        relayer.stop()
        queues.close()
        for other in [bus, *subscribers]:
            other.close()
    names = list(plan)
    raw1, ours1, ours10, ours100 = (results[name] for name in names)
    section = Section(
        title="RabbitMQ publish, publisher confirms on",
        setup=(
            "Time per published event to a private RabbitMQ node, publisher confirms on for"
            " both (`confirm_publish`), task-sent events off, subscriber queues not consumed;"
            " the registry on Redis (`registry_url`); the publish to 100 goes through the relay"
            " (`relay_fanout_above` 25, the default) of one worker running beside; a chunk"
            " ends when the last subscriber's queue holds all its events."
        ),
        figures=[Series(name, "µs", results[name]) for name in names],
    )
    t10 = Series("publish to 10 ÷ one raw send_task", "×", ratios(ours10, raw1))
    t100 = Series("publish to 100 ÷ publish to 1", "×", ratios(ours100, ours1))
    t1 = Series("publish to 1 ÷ one raw send_task", "×", ratios(ours1, raw1))
    section.figures.append(t1)
    section.targets = [
        Target("12. " + t10.name, t10, "≤ 1.5×", t10.median <= 1.5),
        Target("12. " + t100.name, t100, "≤ 3×", t100.median <= 3),
    ]
    return [section]


#: A worker for its relay only: not on the raw tasks' queue, whose messages the raw variant counts.
RELAYER_ARGS = [
    "-l", "info", "-c", "1", "--without-mingle", "--without-gossip", "-Q", "bench.relayer",
]


def _log_says(worker: WorkerProcess, text: str) -> bool:
    return text in worker.log_path.read_text(errors="replace")


def _wait(worker: WorkerProcess, condition: Callable[[], Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        worker.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out; worker log at {worker.log_path}")
        time.sleep(0.05)


def throughput(rabbit_url: str, redis_url: str, client: redis.Redis, smoke: bool) -> list[Section]:
    count = 200 if smoke else 2000
    app = _app(rabbit_url, "bench-rabbitmq-feeder", sent_events=True)
    bus = EventBus(app, service="bench-rabbitmq-feeder", registry_url=redis_url)
    # What benchmarks/service.py subscribes (its worker registers them again when it starts).
    handlers = {s.handler.partition(".")[2]: s.pattern for s in SUBSCRIPTIONS}
    subscribers = [subscriber(rabbit_url, redis_url, "bench", handlers)]
    event_queues = [broker_queue("bench", name) for name in handlers]
    envelope = Event.create("bench.drain", DATA, source="bench").to_envelope()
    queues = Queues(rabbit_url)
    env = {"BENCH_COUNT": str(count), "BENCH_STATE": redis_url}

    def drain(fill: Callable[[], Any]) -> float:
        client.delete(FIRST_KEY, LAST_KEY, SOURCE_KEY)
        fill()
        worker = WorkerProcess(rabbit_url, WORKER_ARGS, env)
        try:
            # A healthy drain takes seconds: a stuck worker fails the run, naming its log.
            _wait(worker, lambda: client.exists(LAST_KEY), timeout=60 if smoke else 300)
        finally:
            worker.stop()
        first, last = float(client.get(FIRST_KEY)), float(client.get(LAST_KEY))
        for name in (RAW_QUEUE, *event_queues):
            left = queues.count(name)
            if left:
                raise RuntimeError(f"{left} messages left on {name} after the drain")
        return (count - 1) / (last - first)

    def raw() -> float:
        def fill() -> None:
            for _ in range(count):
                app.send_task("bench.noop", args=[envelope], kwargs={}, queue=RAW_QUEUE)

        return drain(fill)

    def ours() -> float:
        def fill() -> None:
            for i in range(count):
                bus.publish("bench.drain", {**DATA, "n": i})

        return drain(fill)

    try:
        results = interleaved(
            {"raw no-op tasks": raw, "celery-events deliveries": ours},
            repeats=1 if smoke else 2,
        )
    finally:
        queues.close()
        for other in [bus, *subscribers]:
            other.close()
    raw_rates, our_rates = results["raw no-op tasks"], results["celery-events deliveries"]
    section = Section(
        title=f"RabbitMQ worker throughput, {count:,} queued",
        setup=(
            "Tasks per second of one worker process (`-c 1 -E`, prefork) draining a full"
            " RabbitMQ queue; deliveries run their handler with the inbox on (on the Redis of"
            " `registry_url`)."
        ),
        figures=[
            Series("raw no-op tasks", "tasks/s", raw_rates),
            Series("celery-events deliveries", "tasks/s", our_rates),
            Series(
                "extra time per delivery",
                "ms",
                [(1 / o - 1 / r) * 1e3 for o, r in zip(our_rates, raw_rates, strict=True)],
            ),
        ],
    )
    ratio = Series("deliveries ÷ raw no-op tasks", "×", ratios(our_rates, raw_rates))
    section.targets = [Target("3. RabbitMQ " + ratio.name, ratio, "≥ 0.85×", ratio.median >= 0.85)]
    return [section]
