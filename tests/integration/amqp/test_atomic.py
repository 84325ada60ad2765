"""RabbitMQ: a publisher killed at any moment leaves every subscriber with the event or none.

Ten services subscribe (no worker runs, so every delivery stays queued); a publisher process
publishes in a loop and is SIGKILLed at a random moment, 40 times. Then every queue must hold
the same set of published messages: one that reached some subscribers and not others is a
partial event (the kombu backend this replaced left 37 of 40 partial).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from celery import Celery
from kombu import Connection

from celery_events import EventBus

from .conftest import Rabbit

KILLS = int(os.environ.get("AMQP_ATOMIC_KILLS", "40"))
SUBSCRIBERS = 10
ROOT = Path(__file__).resolve().parents[3]

PUBLISHER = """
import os, sys
from celery import Celery
from celery_events import EventBus
bus = EventBus(Celery("atomicpub", broker=os.environ["BROKER"]), service="atomicpub",
               registry_url=os.environ["STATE"])
n = 0
while True:
    bus.publish("atomic.job", {"n": n})
    n += 1
    if n == 1:
        print("ready", flush=True)
"""


def _drain(connection: Connection, queue: str) -> set[str]:
    channel = connection.channel()
    ids = set()
    while True:
        message = channel.basic_get(queue, no_ack=True)
        if message is None:
            return ids
        ids.add(str(message.headers["id"]))


def test_a_killed_publisher_leaves_no_partial_event(rabbit: Rabbit) -> None:
    buses = []
    for number in range(SUBSCRIBERS):
        bus = EventBus(Celery(f"atomic{number}", broker=rabbit.url), service=f"atomic{number}",
                       registry_url=rabbit.state_url)

        @bus.subscribe("atomic.#", name="job")
        def job(event: object) -> None: ...

        bus.register()
        buses.append(bus)
    rng = random.Random(20261201)
    env = {**os.environ, "BROKER": rabbit.url, "STATE": rabbit.state_url}
    for _ in range(KILLS):
        process = subprocess.Popen(
            [sys.executable, "-c", PUBLISHER], cwd=ROOT, env=env, stdout=subprocess.PIPE
        )
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"ready"
        # The moment of the kill is the fault injected, not a synchronisation: publishing
        # goes on meanwhile, a few milliseconds per event.
        time.sleep(rng.uniform(0.001, 0.05))
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    queues = [f"events.atomic{number}.job" for number in range(SUBSCRIBERS)]
    with Connection(rabbit.url) as connection:
        held = {queue: _drain(connection, queue) for queue in queues}
    every = set().union(*held.values())
    partial = {m for m in every if not all(m in ids for ids in held.values())}
    print(f"\natomic fan-out on RabbitMQ: {KILLS} kills, {len(every)} events, {len(partial)} partial")
    assert len(every) > KILLS
    assert partial == set()
    for bus in buses:
        bus.close()
