"""Which of a service's event queues a worker consumes: what its ``-Q`` and ``-X`` say of them.

A plain ``celery -A svc worker`` consumes every queue of the service's handlers, besides the
app's other queues. ``-Q`` (``--queues``) that names some of the event queues makes the worker
consume those only, so that a worker can be kept for one slow handler's queue; ``-Q`` naming
none of them leaves every event queue consumed (it chooses among the app's other queues).
``-X`` (``--exclude-queues``) keeps the worker off the event queues it names. A handler's
queue may be named by the queue its subscription asked for (``events.orders``) or, on
RabbitMQ, by the handler's own queue there (``events.orders.welcome_order``).

The ``celery worker`` command hands its options to ``celeryd_init``, where
:func:`remember` keeps them for the app; the transports ask :func:`of` when they set up
what the worker consumes.
"""

from __future__ import annotations

import weakref
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["QueueSelection", "consumed_queues", "handler_queues", "of", "remember"]


def _names(value: object) -> frozenset[str]:
    # What Celery accepts (celery.utils.text.str_to_list): "a,b", or a list of names.
    if not value:
        return frozenset()
    if isinstance(value, str):
        value = value.split(",")
    return frozenset(str(name).strip() for name in value if str(name).strip())  # type: ignore[attr-defined]


@dataclass(frozen=True)
class QueueSelection:
    """A worker's ``-Q`` (``named``) and ``-X`` (``excluded``) queue names."""

    named: frozenset[str] = frozenset()
    excluded: frozenset[str] = frozenset()

    def consumes(self, names: Iterable[str], event_queues: Collection[str]) -> bool:
        """Whether the worker consumes a handler's queue, known by ``names``, among the
        service's ``event_queues`` (every name any of its handlers' queues goes by).

        >>> from celery_events._selection import QueueSelection
        >>> events = {"events.orders", "events.orders.slow"}
        >>> QueueSelection().consumes(["events.orders.slow"], events)
        True
        >>> QueueSelection(named=frozenset({"events.orders"})).consumes(["events.orders.slow"], events)
        False
        >>> QueueSelection(named=frozenset({"celery"})).consumes(["events.orders.slow"], events)
        True
        >>> QueueSelection(excluded=frozenset({"events.orders.slow"})).consumes(
        ...     ["events.orders.slow"], events)
        False
        """
        names = set(names)
        if names & self.excluded:
            return False
        if not self.named & set(event_queues):
            return True
        return bool(names & self.named)


def handler_queues(bus: Any) -> dict[str, frozenset[str]]:
    """The names each handler's queue goes by, per handler task name: the queue its
    subscription asked for and, on a backend that gives every handler a broker queue of its
    own (``Backend.topology``, RabbitMQ), that queue's name."""
    topology = bus.backend.topology
    names: dict[str, frozenset[str]] = {}
    for handler in getattr(bus, "handlers", []):
        own = {handler.queue}
        if topology is not None:
            own.add(topology.queue_of(handler.queue, handler.task_name, bus.service)[0])
        names[handler.task_name] = frozenset(own)
    return names


def consumed_queues(bus: Any) -> list[str]:
    """The queues (as subscriptions name them) of the handlers ``bus``'s worker consumes."""
    selection = of(bus.app)
    names = handler_queues(bus)
    every = set().union(*names.values())
    return sorted(
        {
            handler.queue
            for handler in getattr(bus, "handlers", [])
            if selection.consumes(names[handler.task_name], every)
        }
    )


_selections: weakref.WeakKeyDictionary[Any, QueueSelection] = weakref.WeakKeyDictionary()


def remember(app: Any, options: dict[str, Any] | None) -> None:
    """Keep the ``-Q`` and ``-X`` of the worker ``celeryd_init`` is starting for ``app``."""
    options = options or {}
    _selections[app] = QueueSelection(
        named=_names(options.get("queues")), excluded=_names(options.get("exclude_queues"))
    )


def of(app: Any) -> QueueSelection:
    """The queue selection of ``app``'s worker (every queue, where none was remembered)."""
    return _selections.get(app, QueueSelection())
