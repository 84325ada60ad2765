"""Fault injection: thousands of events while workers are killed and the broker dies.

Two subscriber services, two workers each (two pool processes per worker), get a few thousand
events from a publisher while this test `kill -9`s pool processes and whole workers at seeded
random moments (starting replacements), restarts Redis once (or `kill -9`s the RabbitMQ node
and starts it again: publisher confirms on, the registry and inboxes on Redis), and the
handlers fail on purpose now and then. Then a checker compares every (event, handler) effect
with what was expected: zero lost, zero duplicated, and every deliberate failure in the dead letters.

FAULTS_SEED and FAULTS_EVENTS change the run; it prints its counts.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from celery import Celery

from celery_events import EventBus, PublishError, PublishResult

from ..harness import Worker, wait_until
from ..integration.conftest import effects
from .checker import Pair, check
from .conftest import Broker

SEED = int(os.environ.get("FAULTS_SEED", "20261127"))
EVENTS = int(os.environ.get("FAULTS_EVENTS", "2000"))
RATE = 60.0  # events per second
START_UP = 5.0  # seconds after its start before the chaos kills a worker's pool processes
SERVICES = ("fault_a", "fault_b")


def plan(rng: random.Random) -> list[dict[str, object]]:
    """What to publish: a name and data for each event."""
    events = []
    for n in range(EVENTS):
        name = rng.choice(["fault.order.created", "fault.order.audited"])
        kind = rng.choices(["ok", "flaky", "reject", "exhaust"], [85, 10, 2.5, 2.5])[0]
        data: dict[str, object] = {"n": n}
        if kind == "flaky":
            data["flaky"] = rng.randint(1, 2)
        elif kind == "reject":
            data["fail"] = "reject"
        elif kind == "exhaust":
            name = "fault.order.audited"
            data["fail"] = "exhaust"
        events.append({"name": name, "data": data})
    return events


def expectations(results: list[PublishResult]) -> tuple[set[Pair], set[Pair]]:
    expected: set[Pair] = set()
    dead: set[Pair] = set()
    for result in results:
        event = result.event
        for service in SERVICES:
            consume = (f"{service}.consume", event.id)
            (dead if event.data.get("fail") == "reject" else expected).add(consume)
            if event.name.endswith(".audited"):
                audit = (f"{service}.audit", event.id)
                (dead if event.data.get("fail") == "exhaust" else expected).add(audit)
    return expected, dead


class Fleet:
    """The subscriber workers, which the chaos kills and replaces."""

    def __init__(self, start: Callable[..., Worker], broker: Broker) -> None:
        self._start = start
        self.broker = broker
        self.workers: dict[str, list[Worker]] = {s: [] for s in SERVICES}
        self.started: dict[int, float] = {}
        self.count = 0

    def add(self, service: str, ready: bool = True) -> None:
        self.count += 1
        worker = self._start(
            f"tests.services.{service}",
            env=self.broker.env(),
            args=["-c", "2", "-n", f"{service}-{self.count}@%h"],
            ready=ready,
        )
        self.workers[service].append(worker)
        self.started[id(worker)] = time.monotonic()

    def replace_exited(self) -> int:
        """Start a worker for each one that exited (as a supervisor would); how many."""
        replaced = 0
        for service, workers in self.workers.items():
            for worker in [w for w in workers if w.process.poll() is not None]:
                workers.remove(worker)
                self.add(service, ready=False)
                replaced += 1
        return replaced

    def kill_pool_process(self, rng: random.Random) -> bool:
        # Only a worker past its start-up: Celery's worker exits for good ("Could not start
        # worker processes") when a pool process dies before its first loop has seen them all
        # start, a crash of the worker, not of a pool process.
        settled = [
            w for ws in self.workers.values() for w in ws
            if w.process.poll() is None and " ready." in w.log()
            and time.monotonic() - self.started[id(w)] > START_UP
        ]
        if not settled:
            return False
        worker = rng.choice(settled)
        children = _children(worker.process.pid)
        if not children:
            return False
        os.kill(rng.choice(children), signal.SIGKILL)
        return True

    def kill_worker(self, rng: random.Random) -> None:
        service = rng.choice(SERVICES)
        worker = rng.choice(self.workers[service])
        worker.kill()
        self.workers[service].remove(worker)
        self.add(service, ready=False)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def test_no_effect_is_lost_or_duplicated_under_crashes(start_worker, broker: Broker) -> None:
    rng = random.Random(SEED)
    events = plan(rng)
    fleet = Fleet(start_worker, broker)
    for service in SERVICES:
        fleet.add(service)
        fleet.add(service)

    # A publish waits for the broker to come back (a RabbitMQ node takes longer to boot).
    publisher = EventBus(Celery("fault_pub", broker=broker.url), service="fault_pub",
                         registry_url=broker.state_url,
                         publish_timeout=10.0 if broker.name == "redis" else 30.0)
    published: list[PublishResult] = []
    failed_publishes = 0
    done = threading.Event()

    def publish_all() -> None:
        nonlocal failed_publishes
        for spec in events:
            try:
                published.append(publisher.publish(spec["name"], spec["data"]))  # type: ignore[arg-type]
            except PublishError:
                failed_publishes += 1
            time.sleep(1 / RATE)
        done.set()

    thread = threading.Thread(target=publish_all, daemon=True)
    thread.start()

    # Chaos while publishing and a little after: kills at random moments, one broker crash.
    kills = {"pool process": 0, "whole worker": 0, "broker crash": 0}
    started = time.monotonic()
    chaos_until = EVENTS / RATE + 10
    restart_at = chaos_until / 2
    while time.monotonic() - started < chaos_until:
        time.sleep(rng.uniform(0.3, 1.5))
        if kills["broker crash"] == 0 and time.monotonic() - started > restart_at:
            print(f"\n{broker.crash()} at {time.monotonic() - started:.1f} s")
            kills["broker crash"] += 1
        elif rng.random() < 0.7:
            kills["pool process"] += fleet.kill_pool_process(rng)
        else:
            fleet.kill_worker(rng)
            kills["whole worker"] += 1
        fleet.replace_exited()
    thread.join(timeout=120)
    assert done.is_set()
    fleet.replace_exited()

    expected, expected_dead = expectations(published)
    ops = {
        s: EventBus(Celery(f"{s}-ops", broker=broker.url), service=s,
                    registry_url=broker.state_url)
        for s in SERVICES
    }
    client = broker.redis.client()

    def history() -> tuple[list[Pair], list[Pair]]:
        seen = [(str(e["handler"]), str(e["event_id"])) for e in effects(client)]
        dead = [
            (str(letter.handler), str(letter.event_id))
            for bus in ops.values()
            for letter in bus.dead_letters.list(limit=None)
        ]
        return seen, dead

    def settled() -> bool:
        seen, dead = history()
        if broker.name == "redis":
            quiet = all(client.llen(f"events.{s}") == 0 for s in SERVICES) and client.hlen(
                "unacked"
            ) == 0 and all(client.hlen(f"celery_events:ledger:{s}") == 0 for s in SERVICES)
        else:
            quiet = broker.waiting() == 0
        return quiet and len(set(seen)) >= len(expected) and len(set(dead)) >= len(expected_dead)

    wait_until(settled, timeout=300, interval=0.5, what="every delivery handled or dead")
    seen, dead = history()
    verdict = check(expected, expected_dead, seen, dead)
    print(
        f"\nfault injection on {broker.name} (seed {SEED}): {len(published)} events published"
        f" ({failed_publishes} publishes failed and were not counted); kills: {kills};"
        f" {verdict.summary()}"
    )
    for bus in ops.values():
        bus.close()
    publisher.close()
    assert failed_publishes == 0
    assert verdict.valid, verdict.summary()
