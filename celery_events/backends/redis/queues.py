"""Reading a Redis broker's queues without consuming (``celery eventbus status``).

A queue's *waiting* deliveries are its lists' lengths (every priority level); its *in flight*
ones are in kombu's ``unacked`` hash (taken by a worker, not acknowledged yet: running,
prefetched, or held for a retry's countdown). The oldest waiting event's age is read from the
last few items of the list. Reading never takes a message off a queue; an item a worker could
not decode is counted as waiting and left out of the age.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime
from typing import Any

import redis

from ...errors import BrokerError, describe
from .. import first_broker_url
from . import client as _redis

__all__ = ["BrokerQueues"]

# kombu's Redis transport keeps a queue's priority levels in separate lists.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)
#: How many of the oldest items of a queue are read to find the oldest event's time.
_OLDEST_SAMPLE = 10


class BrokerQueues:
    """Reads queue lists and kombu's ``unacked`` hash on a Redis broker, without consuming.

    >>> from celery import Celery
    >>> from celery_events import EventBus
    >>> from celery_events.backends.redis.queues import BrokerQueues
    >>> app = Celery("orders", broker="redis://localhost:6379/0")
    >>> bus = EventBus(app, service="orders")
    >>> @bus.subscribe("user.registered")
    ... def welcome(event): ...
    >>> subscriptions = bus.register()
    >>> results = [bus.publish("user.registered", {"user_id": n}) for n in (1, 2, 3)]
    >>> queues = BrokerQueues.from_app(app)
    >>> queues.waiting("events.orders")   # no worker yet: 3 waiting, and the oldest's age
    (3, ...)
    """

    def __init__(
        self, client: redis.Redis, *, key_prefix: str = "", unacked_key: str = "unacked"
    ) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.unacked_key = key_prefix + unacked_key

    @classmethod
    def from_app(cls, app: Any, timeout: float = 5.0) -> BrokerQueues:
        """Connect to the Redis broker of Celery app ``app``, as its workers do."""
        url = first_broker_url(app.conf.broker_url)
        options = app.conf.broker_transport_options or {}
        return cls(
            _redis.connect(
                url, timeout, use_ssl=app.conf.broker_use_ssl, transport_options=options
            ),
            key_prefix=options.get("global_keyprefix", ""),
            unacked_key=options.get("unacked_key", "unacked"),
        )

    def waiting(self, queue: str, now: float | None = None) -> tuple[int, float | None]:
        """Return the number of deliveries waiting in ``queue`` and the age of the oldest."""
        keys = [self.key_prefix + _priority_queue(queue, p) for p in _PRIORITY_STEPS]
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.llen(key)
                    # Workers take from the right end, so the oldest items are the last ones;
                    # a few are read in case the very oldest is not a message of ours.
                    pipe.lrange(key, -_OLDEST_SAMPLE, -1)
                replies = pipe.execute()
        except redis.RedisError as exc:
            raise _unreachable(exc) from exc
        now = time.time() if now is None else now
        count = sum(int(n) for n in replies[0::2])
        times = [t for items in replies[1::2] for t in map(_published_at, items) if t is not None]
        return count, (max(0.0, now - min(times)) if times else None)

    def in_flight(self) -> dict[str, int]:
        """Return, per queue, how many deliveries are taken by a worker but not acknowledged."""
        counts: dict[str, int] = {}
        try:
            for _, raw in self.client.hscan_iter(self.unacked_key, count=500):
                queue = _unacked_queue(raw)
                if queue is not None:
                    counts[queue] = counts.get(queue, 0) + 1
        except redis.RedisError as exc:
            raise _unreachable(exc) from exc
        return counts


def _priority_queue(queue: str, priority: int) -> str:
    return f"{queue}{_PRIORITY_SEPARATOR}{priority}" if priority else queue


def _published_at(raw: bytes) -> float | None:
    """The event time of a queued delivery, or ``None`` if it is not one of ours."""
    try:
        message = json.loads(raw)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        stamp = str(args[0]["time"])
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _unacked_queue(raw: bytes) -> str | None:
    # kombu stores [message, exchange, routing key]; deliveries are routed by queue name.
    try:
        entry = json.loads(raw)
        return str(entry[2]) if entry[2] else None
    except (ValueError, IndexError, TypeError):
        return None


def _unreachable(exc: redis.RedisError) -> BrokerError:
    return BrokerError(
        f"Could not read the broker's queues: {describe(exc)}. Check that the Redis broker is reachable."
    )
