"""The Celery app the worker benchmarks run: event handlers and the raw tasks they are compared
with, in one app, so one ``celery worker`` command with the same options serves both.

Each task does the same bookkeeping in its worker process: the throughput runs count tasks in
memory and write only the times of the first and the last one; the latency runs record how
long after its publish each task started.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery, signals

import celery_events
from celery_events import Event, EventBus

from ._keys import FIRST_KEY, LAST_KEY, READY_KEY, SOURCE_KEY

app = Celery("bench", broker=os.environ["BENCH_BROKER"])
#: Where the registry, the inbox and the figures live when the broker is not Redis (RabbitMQ).
STATE = os.environ.get("BENCH_STATE")
if STATE:
    app.conf.broker_transport_options = {"confirm_publish": True}
    bus = EventBus(app, service="bench", registry_url=STATE)
elif os.environ.get("BENCH_TRUSTED"):  # checks signatures (benchmarks/signing.py)
    bus = EventBus(app, service="bench", trusted_keys=os.environ["BENCH_TRUSTED"])
else:  # as every version of the bus (``--baseline``) is built
    bus = EventBus(app, service="bench")

_count = int(os.environ.get("BENCH_COUNT", "0"))
_done = 0
_client: redis.Redis | None = None
_client_pid = 0


def client() -> redis.Redis:
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client, _client_pid = redis.Redis.from_url(STATE or os.environ["BENCH_BROKER"]), os.getpid()
    return _client


def tick() -> None:
    global _done
    _done += 1
    if _done == 1:
        # With the time, which celery_events this worker runs (``--baseline`` checks it): one
        # command, as before.
        client().mset({FIRST_KEY: repr(time.time()), SOURCE_KEY: celery_events.__file__})
    if _done == _count:
        client().set(LAST_KEY, repr(time.time()))


def started(kind: str, sent: float) -> None:
    client().rpush(f"bench:latency:{kind}", repr(time.time() - sent))


@bus.subscribe("bench.drain")
def drain(event: Event) -> None:
    tick()


@app.task(name="bench.noop")
def noop(payload: Any) -> None:
    tick()


@bus.subscribe("bench.latency")
def latency(event: Event) -> None:
    started("ours", event.data["sent"])


@app.task(name="bench.raw_latency")
def raw_latency(payload: dict[str, Any]) -> None:
    started("raw", payload["data"]["sent"])


@signals.worker_ready.connect
def _ready(sender: Any = None, **kwargs: Any) -> None:
    client().set(READY_KEY, "1")
