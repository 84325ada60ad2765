"""How far behind each subscribing service is, read from a Redis broker.

For each service in the registry, and each queue its handlers use:

- *waiting*: deliveries in the queue that no worker has taken yet (every priority level);
- *in flight*: deliveries a worker has taken but not acknowledged yet: running, prefetched,
  or held for a retry's countdown (kombu's Redis transport keeps them in its ``unacked`` hash
  until they are acknowledged);
- *oldest waiting*: how long ago the event of the oldest waiting delivery was published;
- *dead letters*: deliveries of the service that gave up and wait to be replayed or purged.

Reading is done with plain Redis commands and never takes a message off a queue. An item a
worker could not decode is counted as waiting and left out of the age, rather than failing the
report.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from . import _redis
from .errors import BrokerError, ConfigurationError, describe
from .registry import Subscription

__all__ = ["QueueStatus", "ServiceStatus", "read_status", "BrokerQueues"]

# kombu's Redis transport keeps a queue's priority levels in separate lists.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)
#: How many of the oldest items of a queue are read to find the oldest event's time.
_OLDEST_SAMPLE = 10


@dataclass(frozen=True)
class QueueStatus:
    """One queue's backlog."""

    name: str
    waiting: int
    in_flight: int
    #: Seconds since the oldest waiting delivery's event was published; ``None``: none waits.
    oldest_waiting: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "queue": self.name,
            "waiting": self.waiting,
            "in_flight": self.in_flight,
            "oldest_waiting_seconds": _rounded(self.oldest_waiting),
        }


@dataclass(frozen=True)
class ServiceStatus:
    """One subscribing service's backlog over all its queues."""

    service: str
    subscriptions: int
    #: When the service last recorded its subscriptions (Unix time).
    registered_at: float
    queues: tuple[QueueStatus, ...]
    #: Deliveries that gave up; ``None`` when dead letters could not be counted.
    dead_letters: int | None

    @property
    def waiting(self) -> int:
        return sum(q.waiting for q in self.queues)

    @property
    def in_flight(self) -> int:
        return sum(q.in_flight for q in self.queues)

    @property
    def oldest_waiting(self) -> float | None:
        ages = [q.oldest_waiting for q in self.queues if q.oldest_waiting is not None]
        return max(ages) if ages else None

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "subscriptions": self.subscriptions,
            "registered_at": self.registered_at,
            "waiting": self.waiting,
            "in_flight": self.in_flight,
            "dead_letters": self.dead_letters,
            "oldest_waiting_seconds": _rounded(self.oldest_waiting),
            "queues": [q.to_json() for q in self.queues],
        }


class BrokerQueues:
    """Reads queue lists and kombu's ``unacked`` hash on a Redis broker, without consuming.

    >>> queues = BrokerQueues.from_app(app)                           # doctest: +SKIP
    >>> queues.waiting("events.orders")                               # doctest: +SKIP
    (3, 12.5)
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
        url = _redis.first_broker_url(app.conf.broker_url)
        if not _redis.is_redis_url(url):
            raise ConfigurationError(
                f"The broker {url.split('://')[0]!r} is not Redis; queue status is read from a"
                " Redis broker only. Use the broker's own tools (rabbitmqctl list_queues)."
            )
        options = app.conf.broker_transport_options or {}
        return cls(
            _redis.connect(url, timeout, use_ssl=app.conf.broker_use_ssl),
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


def read_status(
    subscriptions: Iterable[Subscription],
    queues: BrokerQueues,
    *,
    dead_letters: Callable[[str], int | None] | None = None,
    now: float | None = None,
) -> list[ServiceStatus]:
    """Return the status of every service that has subscriptions, sorted by name.

    ``dead_letters(service)`` counts a service's dead letters (``None`` leaves them unknown).

    >>> for s in read_status(bus.registry.subscriptions(), BrokerQueues.from_app(app)):  # doctest: +SKIP
    ...     print(s.service, s.waiting, s.in_flight, s.oldest_waiting)
    orders 3 1 12.5
    """
    by_service: dict[str, list[Subscription]] = {}
    for subscription in subscriptions:
        by_service.setdefault(subscription.service, []).append(subscription)
    in_flight = queues.in_flight()
    statuses = []
    for service, subs in sorted(by_service.items()):
        queue_statuses = []
        for name in sorted({s.queue for s in subs}):
            waiting, oldest = queues.waiting(name, now)
            queue_statuses.append(QueueStatus(name, waiting, in_flight.get(name, 0), oldest))
        statuses.append(
            ServiceStatus(
                service=service,
                subscriptions=len(subs),
                registered_at=max(s.registered_at for s in subs),
                queues=tuple(queue_statuses),
                dead_letters=dead_letters(service) if dead_letters is not None else None,
            )
        )
    return statuses


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


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def _unreachable(exc: redis.RedisError) -> BrokerError:
    return BrokerError(
        f"Could not read the broker's queues: {describe(exc)}. Check that the Redis broker is reachable."
    )
