"""The buses of this process, by app: the one lookup the worker side and the screening
transport use to find the bus they serve (kombu and Celery's signals make those objects, so
the bus cannot be handed to them). It imports nothing of the package but the bus's Protocol.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from .backends.base import ServiceBus

__all__ = ["add", "for_app", "for_queue", "any_bus"]

_buses: weakref.WeakKeyDictionary[Any, ServiceBus] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def add(app: Any, bus: ServiceBus) -> ServiceBus | None:
    """Record ``bus`` as ``app``'s; return the bus ``app`` already had (then nothing changes)."""
    with _lock:
        existing = _buses.get(app)
        if existing is None:
            _buses[app] = bus
        return existing


def for_app(app: Any) -> ServiceBus | None:
    """The bus of Celery app ``app``, if it has one."""
    return _buses.get(app)


def for_queue(queue: str) -> ServiceBus | None:
    """The bus in this process whose handlers consume ``queue``, if any."""
    for bus in list(_buses.values()):
        if queue in bus.queues:
            return bus
    return None


def any_bus() -> ServiceBus | None:
    """Some bus of this process (a worker process normally has exactly one)."""
    for bus in list(_buses.values()):
        return bus
    return None
