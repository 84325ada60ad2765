"""Fault injection: whole workers killed while they hold deliveries, on Redis and RabbitMQ.

Two workers of one service, named for two different hosts (``a@host-a``, ``b@host-b``; the
processes share this machine, so nothing may tell them apart by host name or pid), get a steady
stream of events whose handlers take a little time. Every setting is the default: no
``visibility_timeout`` override (the bus makes it at least an hour), default sweep interval and
handler time limit. At seeded moments the test `kill -9`s a worker that is running a handler:
its main process alone (its pool processes are orphaned, and the main process stays an
unreaped zombie until the end) or its whole process group (the host dies), and starts a
replacement. Then the checker asserts zero lost and zero duplicated effects, and the test
measures recovery: from each kill until every delivery that was waiting or running at that
moment has taken effect (on Redis, also until every message the dead worker held left kombu's
``unacked`` hash). It prints the times and asserts the longest is under 30 s.

FAULTS_SEED and FAULTS_DEATH_SECONDS (how long events are published) change the run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from celery import Celery

from celery_events import EventBus, PublishResult

from ..harness import Worker, wait_until
from .checker import check
from .conftest import Broker

# tests.services.recovery.STARTED_KEY (importing that module would build its app).
STARTED_KEY = "test:recovery:started"

SEED = int(os.environ.get("FAULTS_SEED", "20261201"))
SECONDS = float(os.environ.get("FAULTS_DEATH_SECONDS", "80"))
RATE = 4.0  # events per second; two workers of two pool processes keep up with half of them
KILL_EVERY = 16.0
RECOVERY_LIMIT = 30.0
QUEUE = "events.recovery"
PREFIX = "celery_events:"


@dataclass
class Kill:
    at: float
    worker: str
    mode: str
    #: Redis only: delivery tags the dead worker's process held in kombu's unacked hash.
    held_tags: list[bytes] = field(default_factory=list)
    held_back_at: float | None = None


class Fleet:
    """Two workers on "two hosts"; kills and replacements."""

    def __init__(self, start: Callable[..., Worker], broker: Broker) -> None:
        self._start = start
        self.broker = broker
        self.workers: dict[str, Worker] = {}
        self.dead: list[Worker] = []
        self.count = 0

    def add(self, host: str, ready: bool = True) -> None:
        self.count += 1
        name = f"{host}{self.count}@host-{host}"
        self.workers[name] = self._start(
            "tests.services.recovery",
            env={**self.broker.env(), "RECOVERY_WORKER": name},
            args=["-c", "2", "-n", name],
            ready=ready,
        )

    def kill(self, name: str, mode: str) -> None:
        worker = self.workers.pop(name)
        if mode == "main process":
            os.kill(worker.process.pid, signal.SIGKILL)  # not reaped: a zombie until the end
        else:
            os.killpg(worker.process.pid, signal.SIGKILL)
        self.dead.append(worker)
        self.add(name[0], ready=False)

    def ready(self) -> list[str]:
        return [name for name, w in self.workers.items() if " ready." in w.log()]

    def clean_up(self) -> None:
        for worker in self.dead:
            try:  # orphaned pool processes of a worker whose main process was killed
                os.killpg(worker.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _records(client: redis.Redis, key: str) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in client.lrange(key, 0, -1)]


def _running(client: redis.Redis) -> dict[str, set[str]]:
    """Worker name -> events whose handler started there and has not taken effect."""
    done = {str(e["event_id"]) for e in _records(client, "test:effects")}
    running: dict[str, set[str]] = {}
    for start in _records(client, STARTED_KEY):
        if start["event_id"] not in done:
            running.setdefault(str(start["worker"]), set()).add(str(start["event_id"]))
    return running


def _handled(client: redis.Redis) -> set[str]:
    return {str(e["event_id"]) for e in _records(client, "test:effects")}


def _held_tags(client: redis.Redis, pid: int) -> list[bytes]:
    """Delivery tags held by the Redis transport of the worker process ``pid``."""
    tokens = set()
    for key in client.scan_iter(f"{PREFIX}alive:*"):
        value = client.get(key)
        if value and json.loads(value).get("pid") == pid:
            tokens.add(key.decode().rsplit(":", 1)[1].encode())
    return [tag for tag, token in client.hgetall(f"{PREFIX}holders").items() if token in tokens]


def test_a_dead_workers_deliveries_run_again_within_30_s(
    broker: Broker, start_worker: Callable[..., Worker], redis_client: redis.Redis
) -> None:
    rng = random.Random(SEED)
    state = redis_client
    fleet = Fleet(start_worker, broker)
    fleet.add("a")
    fleet.add("b")

    app = Celery("recovery_pub", broker=broker.url)
    publisher = EventBus(app, service="recovery_pub", registry_url=broker.state_url)
    published: list[tuple[float, PublishResult]] = []
    done = threading.Event()
    work = random.Random(SEED + 1)

    def publish_all() -> None:
        for n in range(int(SECONDS * RATE)):
            at = time.time()
            published.append(
                (at, publisher.publish("recovery.job", {"n": n, "work": work.uniform(0.2, 0.6)}))
            )
            time.sleep(1 / RATE)
        done.set()

    thread = threading.Thread(target=publish_all, daemon=True)
    thread.start()

    kills: list[Kill] = []
    monitor_stop = threading.Event()

    def watch_held() -> None:
        # When did the last message each dead worker held leave the unacked hash?
        while not monitor_stop.wait(0.2):
            for kill in kills:
                if kill.held_tags and kill.held_back_at is None:
                    with state.pipeline(transaction=False) as pipe:
                        for tag in kill.held_tags:
                            pipe.hexists("unacked", tag)
                        if not any(pipe.execute()):
                            kill.held_back_at = time.time()

    monitor = threading.Thread(target=watch_held, daemon=True)
    if broker.name == "redis":
        monitor.start()

    started = time.monotonic()
    next_kill = rng.uniform(8, 12)
    modes = ["main process", "process group"]
    # Deliveries not yet handled at the last kill. The next kill waits for them: otherwise one
    # put back after a kill can land in the next victim's prefetch, and two recoveries are
    # measured as one.
    pending_at_kill: set[str] = set()
    try:
        while not done.is_set():
            if time.monotonic() - started < next_kill or time.monotonic() - started > SECONDS - 8:
                time.sleep(0.1)
                continue
            if not pending_at_kill <= _handled(state):
                time.sleep(0.1)
                continue

            # A victim that is running a handler right now.
            def busy() -> list[str]:
                running = _running(state)
                return [name for name in fleet.ready() if running.get(name)]

            victims = wait_until(busy, timeout=10, interval=0.05, what="a busy worker")
            name = rng.choice(sorted(victims))
            mode = modes[len(kills) % 2]
            pid = fleet.workers[name].process.pid
            held = _held_tags(state, pid) if broker.name == "redis" else []
            kills.append(Kill(time.time(), name, mode, held))
            fleet.kill(name, mode)
            pending_at_kill = {result.event.id for _, result in list(published)} - _handled(state)
            next_kill += KILL_EVERY
        thread.join(timeout=30)

        expected = {("recovery.work", result.event.id) for _, result in published}

        def settled() -> bool:
            seen = {(str(e["handler"]), str(e["event_id"])) for e in _records(state, "test:effects")}
            if not expected <= seen:
                return False
            if broker.name == "redis":
                return (
                    state.llen(QUEUE) == 0
                    and state.hlen("unacked") == 0
                    and state.hlen(f"{PREFIX}ledger:recovery") == 0
                )
            return broker.waiting() == 0

        wait_until(settled, timeout=3 * RECOVERY_LIMIT, interval=0.2,
                   what="every delivery handled (and, on Redis, acked)")
        monitor_stop.set()
        effects = _records(state, "test:effects")
        ops = EventBus(Celery("recovery-ops", broker=broker.url), service="recovery",
                       registry_url=broker.state_url)
        dead = [(str(d.handler), str(d.event_id)) for d in ops.dead_letters.list(limit=None)]
        ops.close()
        verdict = check(
            expected, set(), [(str(e["handler"]), str(e["event_id"])) for e in effects], dead
        )
    finally:
        monitor_stop.set()
        publisher.close()
        fleet.clean_up()

    # Recovery of a kill: until every delivery published before it and not yet handled
    # (waiting, prefetched or running, on whichever worker) has taken effect.
    took: dict[str, float] = {}
    for effect in effects:
        took.setdefault(str(effect["event_id"]), float(str(effect["t"])))
    published_at = {result.event.id: at for at, result in published}
    recoveries = []
    lines = []
    for kill in kills:
        pending = [
            took[event_id] - kill.at
            for event_id, at in published_at.items()
            if at < kill.at < took[event_id]
        ]
        recovery = max(pending, default=0.0)
        recoveries.append(recovery)
        held = ""
        if kill.held_tags:
            assert kill.held_back_at is not None
            back = kill.held_back_at - kill.at
            recoveries.append(back)
            held = f", its {len(kill.held_tags)} unacked message(s) back in {back:.1f} s"
        lines.append(
            f"  kill -9 {kill.mode} of {kill.worker}: {len(pending)} deliveries pending, all"
            f" handled {recovery:.1f} s later{held}"
        )
    print(
        f"\nworker death on {broker.name} (seed {SEED}): {len(published)} events, {len(kills)}"
        f" kills; {verdict.summary()}\n" + "\n".join(lines)
        + f"\n  recovery: max {max(recoveries):.1f} s, median {statistics.median(recoveries):.1f} s"
    )
    assert kills and all(kill.at for kill in kills)
    assert verdict.valid, verdict.summary()
    assert max(recoveries) < RECOVERY_LIMIT
