"""The services of the contract suite, written once and run on every backend.

A backend's harness builds them in its own way: the Redis harness starts
``celery -A tests.services.contract worker`` with ``CONTRACT_SERVICE`` naming one of them; the
memory harness builds them in the test process on ``Celery(broker="memory://")`` apps. Either
way the handlers below are what runs, and what they do is written on a :class:`Board` the test
can read: a Redis hash and lists for worker processes, Python dicts in-process.

Handlers record one effect per run that succeeded, and count every run, so a test can tell
"handled once" from "handled twice" and from "ran three times, then succeeded".
"""

from __future__ import annotations

import json
import os
import signal
from collections import defaultdict
from typing import Any, Protocol

from celery import Celery

from celery_events import Event, EventBus, Reject, Retry

#: The shop's patterns: exact, ``*`` (exactly one word) and ``#`` (zero or more words).
SUBSCRIPTIONS: dict[str, list[tuple[str, str]]] = {
    "alpha": [
        ("placed", "shop.order.placed"),
        ("any_order", "shop.order.*"),
        ("all_shop", "shop.#"),
    ],
    "beta": [
        ("placed", "shop.order.placed"),
        ("one_word", "shop.*"),
    ],
    # A service whose worker is not running when the event is published.
    "gamma": [("reserve", "stock.reserved")],
    # Handlers that fail as the event's data says (see flaky_work).
    "flaky": [("work", "work.#"), ("witness", "work.#"), ("tally", "tally.#")],
}

#: Settings of every contract service: quick retries, so a backend is judged on what it does
#: and not on how long it waits.
SETTINGS: dict[str, Any] = {
    "max_retries": 3,
    "retry_backoff": 0.05,
    "retry_backoff_max": 0.5,
    "retry_jitter": False,
    "max_deliveries": 3,
    "handler_time_limit": 30,
    "redelivery_timeout": 2.0,
    "sweep_interval": 0.5,
}


class Board(Protocol):
    """Where handlers write what happened and tests read it (and steer handlers)."""

    def incr(self, key: str) -> int: ...

    def count(self, key: str) -> int: ...

    def get(self, key: str) -> str | None: ...

    def set(self, key: str, value: str) -> None: ...

    def append(self, key: str, value: str) -> None: ...

    def items(self, key: str) -> list[str]: ...

    def key(self, key: str) -> str:
        """The name ``key`` has in the store itself (for writes a handler queues there)."""
        ...


class MemoryBoard:
    """A :class:`Board` in this process's memory, for backends that run handlers here."""

    def __init__(self) -> None:
        self._counters: defaultdict[str, int] = defaultdict(int)
        self._values: dict[str, str] = {}
        self._lists: defaultdict[str, list[str]] = defaultdict(list)

    def incr(self, key: str) -> int:
        self._counters[key] += 1
        return self._counters[key]

    def count(self, key: str) -> int:
        return self._counters[key]

    def get(self, key: str) -> str | None:
        return self._values.get(key)

    def set(self, key: str, value: str) -> None:
        self._values[key] = value

    def append(self, key: str, value: str) -> None:
        self._lists[key].append(value)

    def items(self, key: str) -> list[str]:
        return list(self._lists[key])

    def key(self, key: str) -> str:
        return key


class RedisBoard:
    """A :class:`Board` in a Redis the test and the worker processes share."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.prefix = prefix

    def incr(self, key: str) -> int:
        return int(self.client.incr(self.prefix + key))

    def count(self, key: str) -> int:
        return int(self.client.get(self.prefix + key) or 0)

    def get(self, key: str) -> str | None:
        value = self.client.get(self.prefix + key)
        return None if value is None else bytes(value).decode()

    def set(self, key: str, value: str) -> None:
        self.client.set(self.prefix + key, value)

    def append(self, key: str, value: str) -> None:
        self.client.rpush(self.prefix + key, value)

    def items(self, key: str) -> list[str]:
        return [bytes(raw).decode() for raw in self.client.lrange(self.prefix + key, 0, -1)]

    def key(self, key: str) -> str:
        return self.prefix + key


def build_service(app: Celery, service: str, board: Board, **settings: Any) -> EventBus:
    """The bus of contract service ``service`` on ``app``, its handlers subscribed."""
    bus = EventBus(app, service=service, **{**SETTINGS, **settings})
    for name, pattern in SUBSCRIPTIONS[service]:
        if service == "flaky" and name == "work":
            bus.subscribe(pattern, name=name, dont_retry_for=(KeyError,))(flaky_work(board))
        elif service == "flaky" and name == "tally":
            bus.subscribe(pattern, name=name)(tally(bus, board))
        elif service == "flaky" and name == "witness":
            # Runs for every delivery, without an inbox: it shows a second delivery arrived.
            bus.subscribe(pattern, name=name, inbox=False)(recorder(board, "flaky.witness"))
        else:
            bus.subscribe(pattern, name=name)(recorder(board, f"{service}.{name}"))
    return bus


def tally(bus: EventBus, board: Board) -> Any:
    """A handler whose effect is a write it queues on ``bus.redis_effects()``, committed with
    its inbox record; it fails after queueing it for the first ``fail_times`` runs."""

    def handle(event: Event) -> None:
        run = board.incr(f"runs:flaky.tally:{event.id}")
        effect = {"handler": "flaky.tally", "event_id": event.id, "name": event.name,
                  "data": event.data, "run": run}
        bus.redis_effects().rpush(board.key("effects"), json.dumps(effect))
        if run <= int(event.data.get("fail_times", 0)):
            raise ConnectionError(f"the tally failed after queueing its effect (run {run})")

    return handle


def recorder(board: Board, handler: str) -> Any:
    def handle(event: Event) -> None:
        run = board.incr(f"runs:{handler}:{event.id}")
        record(board, handler, event, run)

    handle.__name__ = handler.rsplit(".", 1)[1]
    return handle


def record(board: Board, handler: str, event: Event, run: int) -> None:
    board.append(
        "effects",
        json.dumps(
            {"handler": handler, "event_id": event.id, "name": event.name, "data": event.data,
             "run": run}
        ),
    )


def flaky_work(board: Board) -> Any:
    """A handler whose failures the event's data orders:

    ``fail_times: n`` fails n runs (ConnectionError), then succeeds; ``retry_delay: s`` asks for
    ``Retry(delay=s)`` once; ``broken: key`` fails (ValueError) while the board holds
    ``broken:{key}``; ``reject`` rejects; ``bad_key`` raises KeyError, which is not retried;
    ``crash`` kills the process running the handler.
    """

    def work(event: Event) -> None:
        data = event.data
        run = board.incr(f"runs:flaky.work:{event.id}")
        if data.get("crash"):
            os.kill(os.getpid(), signal.SIGKILL)
        if data.get("reject"):
            raise Reject("the order is cancelled")
        if data.get("bad_key"):
            raise KeyError("missing")
        if data.get("retry_delay") is not None and run == 1:
            raise Retry(delay=float(data["retry_delay"]))
        if run <= int(data.get("fail_times", 0)):
            raise ConnectionError(f"the payment gateway is down (run {run})")
        if data.get("broken") and board.get(f"broken:{data['broken']}"):
            raise ValueError("the handler is broken for this event")
        record(board, "flaky.work", event, run)

    return work
