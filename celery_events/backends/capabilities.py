"""What a backend guarantees, as data (see :mod:`celery_events.backends.base`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

from ..errors import ConfigurationError

__all__ = ["Capabilities", "check_required"]


@dataclass(frozen=True)
class Capabilities:
    """What a backend guarantees, one flag per guarantee (the documentation's Guarantees page has them per backend).

    >>> from celery_events import Capabilities
    >>> Capabilities(atomic_fanout=True).missing(["atomic_fanout", "queue_screening"])
    ['queue_screening']
    """

    #: A publish puts every delivery of the event on the broker, or none (a publisher that
    #: dies mid-call, a refused write leave nothing behind).
    atomic_fanout: bool = False
    #: ``bus.publish_many`` puts the deliveries of all its events on the broker, or none.
    atomic_batches: bool = False
    #: Every delivery is recorded from publish until handled; one that vanished between queue
    #: and worker is found and sent again by the sweeper.
    lost_delivery_ledger: bool = False
    #: Workers screen every item they pop: unreadable or foreign items on event queues become
    #: dead letters instead of stopping the worker.
    queue_screening: bool = False
    #: Messages held by a worker process that died (``kill -9``, host lost) go back on their
    #: queue within seconds, not after a visibility timeout.
    dead_worker_recovery: bool = False
    #: The broker itself caps how often one message is delivered (RabbitMQ quorum queues'
    #: delivery limit); without it the inbox's start counter does (``max_deliveries``).
    native_delivery_limit: bool = False
    #: ``celery eventbus status`` can read each queue's waiting and in-flight deliveries.
    queue_status: bool = False
    #: ``bus.redis_effects()``: a handler's Redis writes commit in one transaction with its
    #: inbox record (exactly-once effects).
    transactional_effects: bool = False
    #: Inbox, dead letters and registry outlive the process (memory ones do not).
    durable_state: bool = False

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every capability name, in declaration order."""
        return tuple(f.name for f in fields(cls))

    def missing(self, required: Iterable[str]) -> list[str]:
        """The names in ``required`` this backend does not provide (in the order given)."""
        return [name for name in required if not getattr(self, name)]

    def to_json(self) -> dict[str, bool]:
        return {name: bool(getattr(self, name)) for name in self.names()}


def check_required(backend: str, capabilities: Capabilities, required: Iterable[str]) -> None:
    """Raise :class:`ConfigurationError` naming what ``required`` asks and ``backend`` lacks."""
    required = list(required)
    known = Capabilities.names()
    unknown = [name for name in required if name not in known]
    if unknown:
        raise ConfigurationError(
            f"The setting require names {', '.join(map(repr, unknown))}, which"
            f" {'is not a capability' if len(unknown) == 1 else 'are not capabilities'}; the"
            f" capabilities are {', '.join(known)}."
        )
    missing = capabilities.missing(required)
    if missing:
        raise ConfigurationError(
            f"The service requires {', '.join(missing)}, which the {backend} backend does not"
            " provide (`celery eventbus status` lists what it does). Use a broker that provides"
            f" {'it' if len(missing) == 1 else 'them'} (redis:// provides every capability but"
            " native_delivery_limit), or drop it from the bus's require setting."
        )
