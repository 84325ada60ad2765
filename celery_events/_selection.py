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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery.utils.text import str_to_list

__all__ = [
    "QueueSelection",
    "consumed_handlers",
    "consumed_queues",
    "event_queue_names",
    "handler_queues",
    "of",
    "remember",
]


def _names(value: object) -> frozenset[str]:
    # As Celery reads -Q and -X itself (WorkController.setup_queues): "a,b", or a list.
    return frozenset(str_to_list(value) or ())


@dataclass(frozen=True)
class QueueSelection:
    """A worker's ``-Q`` (``named``) and ``-X`` (``excluded``) queue names."""

    named: frozenset[str] = frozenset()
    excluded: frozenset[str] = frozenset()

    def consumed(self, queues: Mapping[str, frozenset[str]]) -> set[str]:
        """Of the handlers in ``queues`` (task name: the names its queue goes by), those
        whose queue the worker consumes.

        >>> from celery_events._selection import QueueSelection
        >>> queues = {"orders.fast": frozenset({"events.orders"}),
        ...           "orders.slow": frozenset({"events.orders.slow"})}
        >>> sorted(QueueSelection().consumed(queues))
        ['orders.fast', 'orders.slow']
        >>> sorted(QueueSelection(named=frozenset({"events.orders.slow"})).consumed(queues))
        ['orders.slow']
        >>> sorted(QueueSelection(named=frozenset({"celery"})).consumed(queues))
        ['orders.fast', 'orders.slow']
        >>> sorted(QueueSelection(excluded=frozenset({"events.orders.slow"})).consumed(queues))
        ['orders.fast']
        """
        # A -Q naming none of the event queues chooses among the app's other queues only.
        chooses = bool(self.named & event_queue_names(queues))
        return {
            handler
            for handler, names in queues.items()
            if not names & self.excluded and (not chooses or names & self.named)
        }


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


def event_queue_names(queues: Mapping[str, frozenset[str]]) -> frozenset[str]:
    """Every name any handler's queue in ``queues`` (as :func:`handler_queues`) goes by."""
    return frozenset().union(*queues.values())


def consumed_handlers(bus: Any) -> set[str]:
    """The task names of the handlers whose queues ``bus``'s worker consumes."""
    return of(bus.app).consumed(handler_queues(bus))


def consumed_queues(bus: Any) -> list[str]:
    """The queues (as subscriptions name them) of the handlers ``bus``'s worker consumes."""
    consumed = consumed_handlers(bus)
    return sorted(
        {handler.queue for handler in getattr(bus, "handlers", []) if handler.task_name in consumed}
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
