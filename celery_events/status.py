"""How far behind each subscribing service is, read from the backend's queues.

For each service in the registry, and each queue its handlers use:

- *waiting*: deliveries in the queue that no worker has taken yet (every priority level);
- *in flight*: deliveries a worker has taken but not acknowledged yet: running, prefetched,
  or held for a retry's countdown (kombu's Redis transport keeps them in its ``unacked`` hash
  until they are acknowledged);
- *oldest waiting*: how long ago the event of the oldest waiting delivery was published;
- *dead letters*: deliveries of the service that gave up and wait to be replayed or purged.

The queues are read by the backend's transport (:meth:`Transport.queue_reader
<celery_events.backends.base.Transport.queue_reader>`, on Redis ``backends/redis/queues.py``),
which never takes a message off a queue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .backends.base import QueueReader
from .registry import Subscription

__all__ = ["QueueStatus", "ServiceStatus", "read_status"]


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


def read_status(
    subscriptions: Iterable[Subscription],
    queues: QueueReader,
    *,
    dead_letters: Callable[[str], int | None] | None = None,
    now: float | None = None,
) -> list[ServiceStatus]:
    """Return the status of every service that has subscriptions, sorted by name.

    ``dead_letters(service)`` counts a service's dead letters (``None`` leaves them unknown).

    >>> from celery import Celery
    >>> from celery_events import EventBus
    >>> from celery_events.status import read_status
    >>> bus = EventBus(Celery("orders", broker="redis://localhost:6379/0"), service="orders")
    >>> @bus.subscribe("user.registered")
    ... def welcome(event): ...
    >>> subscriptions = bus.register()
    >>> results = [bus.publish("user.registered", {"user_id": n}) for n in (1, 2, 3)]
    >>> for s in read_status(bus.registry.subscriptions(), bus.backend.transport.queue_reader(5.0)):
    ...     print(s.service, s.waiting, s.in_flight)
    orders 3 0
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


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)
