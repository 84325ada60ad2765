"""The roles a backend plays, as Protocols, and what it guarantees, as data.

A backend is chosen from the app's broker URL (:mod:`celery_events.backends`) and provides:

- a :class:`Transport`: sends all deliveries of one event (or raises having sent none, where
  :attr:`Capabilities.atomic_fanout` says it can promise that), prepares and checks a worker,
  and reads its queues for ``celery eventbus status``;
- a :class:`Recovery` (or ``None``): the lost-delivery sweep and the dead-worker reaper, run
  by every worker of the service;
- a :class:`StateStore`: each service's inbox and leases (:class:`Inbox`) and dead letters
  (:class:`DeadLetterRecords`), the transaction ``bus.redis_effects()`` joins, and the trace
  records every service shares (:class:`TraceStore`);
- a :class:`RegistryStore`: the registry's records and its change token.

Nothing here imports a broker driver, so core modules may import this one; backends import it,
never the reverse. Callers read :class:`Capabilities` instead of asking what class a backend
is: a missing guarantee the service requires (the ``require`` setting) is a
:class:`~celery_events.errors.ConfigurationError` when the backend is made.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import CeleryEventsError
from .capabilities import Capabilities, check_required

if TYPE_CHECKING:
    from typing import TypeAlias

    from .._messages import TaskMessage
    from ..settings import Settings

    #: The deliveries of one event as a transport sends them: its messages, and the catalog's
    #: ``(field, value)`` when the transport records it (``Transport.records_catalog``).
    Outgoing: TypeAlias = tuple[Sequence[TaskMessage], tuple[str, str] | None]

__all__ = [
    "Backend",
    "Capabilities",
    "Claim",
    "DeadLetterListener",
    "DeadLetterSink",
    "DeadLetterRecords",
    "Inbox",
    "QueueReader",
    "Recovery",
    "RegistryStore",
    "ServiceBus",
    "StateStore",
    "StoreError",
    "StoreUnavailable",
    "SweepResult",
    "Topology",
    "TraceStore",
    "Transport",
    "check_required",
    "lease_value",
    "send_in_thread",
    "with_state",
]


class StoreError(CeleryEventsError):
    """A store could not be read or written; ``str()`` is the driver's reason.

    ``fix`` is the backend's advice (which rights a user needs, say), or ``None``.
    """

    def __init__(self, reason: str, fix: str | None = None) -> None:
        super().__init__(reason)
        self.fix = fix


class StoreUnavailable(StoreError):
    """A store could not be reached: refused, timed out, or its reply was lost (the write may
    or may not have happened). Raised by backends for driver errors that a later try may not
    meet (redis-py ``ConnectionError``/``TimeoutError``, Django ``OperationalError``/
    ``InterfaceError``); a worker waits for the store and never acknowledges the delivery.
    """


# -- the service as backends see it --------------------------------------------------------


class ServiceBus(Protocol):
    """What a backend's worker side reads from the bus it serves (``EventBus`` is one)."""

    @property
    def app(self) -> Any: ...

    @property
    def service(self) -> str: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def handler_names(self) -> frozenset[str]: ...

    @property
    def queues(self) -> list[str]: ...

    @property
    def longest_delivery_wait(self) -> float:
        """The longest a delivery may wait for a retry plus run: seconds."""
        ...

    @property
    def inbox(self) -> Inbox: ...

    @property
    def backend(self) -> Backend: ...

    @property
    def dead_letters(self) -> DeadLetterSink: ...

    @property
    def middleware(self) -> DeadLetterListener: ...


class DeadLetterSink(Protocol):
    """Where the worker side keeps what it gives up on (``bus.dead_letters``)."""

    def add(self, letter: Any) -> Any:
        """Store ``letter`` (a :class:`~celery_events.DeadLetter`) durably."""
        ...


class DeadLetterListener(Protocol):
    """Who hears of a dead letter the worker side kept (``bus.middleware``, the chain)."""

    def dead_lettered(self, letter: Any) -> None:
        """Tell the chain's ``on_dead_letter`` listeners of ``letter``, once it is stored."""
        ...


# -- transport -----------------------------------------------------------------------------


class QueueReader(Protocol):
    """Reads a broker's queues without consuming (``celery eventbus status``)."""

    def waiting(self, queue: str, now: float | None = None) -> tuple[int, float | None]:
        """Deliveries waiting in ``queue`` and the age in seconds of the oldest (or None)."""
        ...

    def in_flight(self) -> dict[str, int]:
        """Per queue, deliveries a worker took and has not acknowledged."""
        ...


class Transport(Protocol):
    """Puts deliveries on the broker, and gets a worker ready to consume them."""

    #: Whether :meth:`send` writes the catalog entry in the same atomic step as the
    #: deliveries (it shares the registry's store); if not, the bus does not hand it one.
    records_catalog: bool
    #: Whether :meth:`send` gives every message of a publish its task id itself (RabbitMQ
    #: derives them from the one message it sends); the publish path then builds them with
    #: placeholder ids instead of drawing random ones that would be thrown away.
    assigns_task_ids: bool

    def send(self, messages: Sequence[TaskMessage], catalog: tuple[str, str] | None) -> None:
        """Send every message; raise :class:`~celery_events.errors.PublishError` having sent
        none when the backend has :attr:`Capabilities.atomic_fanout` (else some may be sent).

        ``catalog`` is a ``(field, value)`` the catalog records (``records_catalog`` only).
        """
        ...

    def send_many(self, batches: Sequence[Outgoing]) -> None:
        """Send the deliveries of many events (``bus.publish_many``), each ``(messages,
        catalog)`` as :meth:`send` takes them; in one round trip where the broker allows.

        With :attr:`Capabilities.atomic_batches` it raises
        :class:`~celery_events.errors.PublishError` having sent nothing of any event;
        otherwise the events before the failing one may be sent, and it raises
        :class:`~celery_events.errors.PartialPublishError` saying how many were.
        """
        ...

    async def asend_many(self, batches: Sequence[Outgoing]) -> None:
        """:meth:`send_many` for an asyncio caller (``bus.apublish``), with the same
        guarantees and errors, never blocking the event loop on I/O.

        Redis sends natively (``redis.asyncio``); a transport whose driver has no asyncio API
        (kombu, py-amqp) runs :meth:`send_many` in a worker thread (:func:`send_in_thread`).
        """
        ...

    async def aclose(self) -> None:
        """Close what :meth:`asend_many` opened on the running event loop (:meth:`close`
        closes the rest)."""
        ...

    def prepare_worker(self, bus: ServiceBus) -> None:
        """Adjust the app's configuration before its worker is built (``celeryd_init``).

        Raises :class:`~celery_events.errors.ConfigurationError` for a setting that would
        lose deliveries; the start-up check then refuses the worker with that message.
        """
        ...

    def check_worker(self, bus: ServiceBus) -> None:
        """Raise :class:`~celery_events.errors.ConfigurationError` if the worker must not
        start (run by the start-up bootstep, before consuming)."""
        ...

    def queue_reader(self, timeout: float) -> QueueReader:
        """A reader of the broker's queues; ConfigurationError without ``queue_status``."""
        ...

    def close(self) -> None: ...


def send_each(transport: Transport, batches: Sequence[Outgoing]) -> None:
    """:meth:`Transport.send_many` for a transport without ``atomic_batches``: one
    :meth:`~Transport.send` per event, in order. A failure raises
    :class:`~celery_events.errors.PartialPublishError` once an event is sent (the plain
    :class:`~celery_events.errors.PublishError` of the first one otherwise)."""
    from ..errors import PartialPublishError, PublishError

    for done, (messages, catalog) in enumerate(batches):
        try:
            transport.send(messages, catalog)
        except PublishError as exc:
            if not done:
                raise
            raise PartialPublishError(
                f"{exc} The first {done} of the {len(batches)} events of this publish_many were"
                " sent before it failed, and stay sent; publish the others again.",
                sent=done,
            ) from exc


async def send_in_thread(transport: Transport, batches: Sequence[Outgoing]) -> None:
    """:meth:`Transport.asend_many` for a transport whose driver has no asyncio API: its
    blocking :meth:`~Transport.send_many` in a worker thread of the loop's default executor,
    so the loop keeps running while the broker answers.

    A caller cancelled while it waits stops waiting, not the send: the thread carries on, and
    the deliveries may be sent all the same (as after a lost reply).
    """
    import asyncio

    await asyncio.to_thread(transport.send_many, batches)


class Topology(Protocol):
    """How a backend that routes on the broker names and reaches each handler's queue.

    RabbitMQ's (``backends/amqp/``) gives every handler a queue of its own, declared with
    its owner's arguments, and sends retries to that queue alone. Backends without one
    (``Backend.topology is None``) use the handler's queue as it is, and Celery's own routing.
    """

    def queue_of(self, queue: str, handler: str, service: str) -> tuple[str, dict[str, Any]]:
        """The broker queue of ``handler`` (a task name) whose queue setting is ``queue``,
        and the arguments its owner declares it with."""
        ...

    def retry_options(
        self, queue: str, handler: str, countdown: float
    ) -> tuple[float, dict[str, Any]]:
        """The countdown and ``Task.retry`` options that bring a retry of ``handler`` back to
        its own queue alone (``queue`` as for :meth:`queue_of`)."""
        ...


# -- recovery ------------------------------------------------------------------------------


class Recovery(Protocol):
    """Background work every worker of a service runs while it consumes."""

    def process_token(self, key_prefix: str) -> str:
        """This process's token, kept alive where recovery looks for dead holders of broker
        messages (the screening transport records held messages under it)."""
        ...

    def start(self, bus: ServiceBus) -> None:
        """Start looking for lost deliveries and dead workers' messages (``worker_ready``)."""
        ...

    def stop(self) -> None: ...


@dataclass
class SweepResult:
    """What one sweep of the lost-delivery ledger did."""

    #: Lost deliveries sent again.
    resent: int = 0
    #: Ledger entries of deliveries lost ``max_deliveries`` times: given up.
    given_up: list[dict[str, Any]] = field(default_factory=list)
    #: ``(task id, raw entry)`` of ledger entries that are not what the fan-out writes.
    unreadable: list[tuple[str, bytes]] = field(default_factory=list)


# -- state ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """What the inbox said when a delivery asked to run."""

    #: ``run``, ``done`` (already handled) or ``busy`` (another copy holds the lease).
    status: str
    holder: str = ""
    #: When ``busy``: milliseconds until the lease expires or its holder counts as dead.
    holder_ttl_ms: int = 0
    #: Runs begun and not finished, this one included: above 1, earlier runs died.
    starts: int = 0
    failures: int = 0
    first_failed_at: float | None = None


def lease_value(task_id: str, process: str) -> str:
    """The inbox lease of one run of ``task_id`` in the process with token ``process``.

    Each run's lease is its own (``run``), so two copies in one process (a threads pool) never
    take each other's lease for their own; host and pid are for people reading it.
    """
    return json.dumps(
        {
            "task": task_id,
            "process": process,
            "run": uuid.uuid4().hex[:12],
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
    )


class Inbox(Protocol):
    """One service's delivery bookkeeping: inbox records, leases, failure counts."""

    #: Whether :meth:`succeed` given a ``delivery_tag`` also acknowledges the broker's message
    #: (the Redis inbox on the broker's Redis), so that the worker's own ack has nothing to do.
    acknowledges: bool

    def process_token(self) -> str:
        """This process's token (kept alive where the backend tracks liveness); leases name it."""
        ...

    def is_done(self, handler: str, event_id: str, *, event_time: float) -> bool:
        """Whether ``handler`` finished the event (its id and its time, ``event.time`` as a
        POSIX timestamp) within the ``inbox_ttl`` window."""
        ...

    def claim(
        self,
        handler: str,
        event_id: str,
        task_id: str,
        *,
        event_time: float,
        lease: str,
        lease_seconds: float,
        use_inbox: bool,
    ) -> Claim:
        """Take the delivery's lease, unless it is done or a live copy holds it.

        ``event_time`` is the event's ``time`` as a POSIX timestamp: a store may group its
        records by it (the Redis inbox does), so every call about one event passes the same."""
        ...

    def new_effects(self) -> Any | None:
        """A fresh buffer of effects a handler may queue (``bus.redis_effects()``), committed
        by :meth:`succeed` with the inbox record; None where the store has none."""
        ...

    def succeed(
        self,
        handler: str,
        event_id: str,
        task_id: str,
        *,
        event_time: float,
        lease: str,
        use_inbox: bool,
        ttl_seconds: float,
        effects: Any | None = None,
        delivery_tag: str | None = None,
    ) -> bool:
        """Record success (with ``effects``, atomically); False when ``lease`` was taken over.

        Where :attr:`acknowledges`, a success recorded also acknowledges the broker's message
        ``delivery_tag`` (kombu's tag of the message that brought the delivery)."""
        ...

    def release(
        self,
        handler: str,
        event_id: str,
        task_id: str,
        *,
        lease: str,
        failed: bool,
        next_due_in: float = 0.0,
        forget: bool = False,
    ) -> int:
        """End a run that is retried (``forget=False``) or given up; returns the failures."""
        ...

    def forget(self, task_id: str) -> None:
        """Drop a delivery's bookkeeping (it was dead-lettered before it could be claimed)."""
        ...


class DeadLetterRecords(Protocol):
    """Where one service's dead letters are kept: JSON records scored by time."""

    def add(self, id: str, record: str, score: float) -> None:
        """Store one record (replacing one with the same id); raise :class:`StoreError`."""
        ...

    def trim(self, limit: int) -> list[str]:
        """Drop the oldest records beyond ``limit``; return their ids."""
        ...

    def newest_first(self) -> list[tuple[str, float]]:
        """Every ``(id, score)``, newest first."""
        ...

    def get(self, id: str) -> tuple[bytes, float] | None: ...

    def load(self, ids: Sequence[str]) -> list[bytes | None]: ...

    def remove(self, ids: Sequence[str]) -> None: ...

    def count(self) -> int: ...


class TraceStore(Protocol):
    """The trace records of every service sharing the store (``celery eventbus trace``).

    Records are grouped by correlation id (one conversation): one group holds fields, each a
    small JSON text, and expires ``ttl`` seconds after its last write; each event id names
    its group for as long. Keys are shared by all services, so any service reads the whole
    conversation.
    """

    def write(
        self, correlation_id: str, event_ids: Sequence[str], fields: dict[str, str], ttl: float
    ) -> None:
        """Set ``fields`` in ``correlation_id``'s group and make the group and ``event_ids``
        expire ``ttl`` seconds from now, in one round trip; raise :class:`StoreError`."""
        ...

    def correlation_of(self, event_id: str) -> str | None:
        """The correlation id of ``event_id``'s group, or None (never recorded, or expired)."""
        ...

    def load(self, correlation_id: str) -> dict[str, str]:
        """Every field of ``correlation_id``'s group (empty when it expired)."""
        ...


class StateStore(Protocol):
    """Inboxes and dead letters of every service sharing the store, and its trace records."""

    def inbox(self, service: str) -> Inbox: ...

    def dead_letters(self, service: str) -> DeadLetterRecords: ...

    def dead_letter_services(self) -> list[str]:
        """Every service holding dead letters here."""
        ...

    def traces(self) -> TraceStore:
        """The trace records (``trace_records``); raise
        :class:`~celery_events.errors.ConfigurationError` where the store keeps none."""
        ...

    def close(self) -> None: ...


def with_state(capabilities: Capabilities) -> Capabilities:
    """What a backend guarantees beside a state store the bus brings (the Django database's).

    ``bus.redis_effects()`` commits a handler's Redis writes in one transaction with its inbox
    record, which is then elsewhere; the rest is the broker's (the Redis backend keeps its
    lost-delivery ledger beside the other store's inbox).
    """
    return replace(capabilities, transactional_effects=False)


# -- registry ------------------------------------------------------------------------------


class RegistryStore(Protocol):
    """The registry's records (one per service) and a token replaced with every write."""

    def write(self, service: str, record: str) -> None:
        """Replace ``service``'s record and the version token, atomically; StoreError."""
        ...

    def remove(self, service: str) -> None: ...

    def version(self) -> bytes | None: ...

    def load(self, known: Sequence[str] = ()) -> tuple[bytes | None, dict[bytes, bytes]]:
        """The version token and every service's record, read together; the records of the
        ``known`` services are read even where the store's own list of services lacks them
        (a store whose list anyone may edit, such as the Redis one's index)."""
        ...

    def record_published(self, field: str, value: str) -> None:
        """Note in the catalog that ``field`` (``"service event-name"``) was published."""
        ...

    def published(self) -> list[str]:
        """Every catalog field recorded by :meth:`record_published` (or by the transport)."""
        ...

    def migrate(self) -> list[str]:
        """Move records kept in an older layout to the current one; return their services."""
        ...

    def close(self) -> None: ...


# -- a backend -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """The roles one broker URL provides, wired for one bus."""

    #: Its name in the scheme table (``redis``, ``amqp``, ``memory``...).
    name: str
    capabilities: Capabilities
    transport: Transport
    state: StateStore
    registry: RegistryStore
    recovery: Recovery | None = None
    #: Where it lives, for people (passwords hidden).
    description: str = ""
    #: How it names and routes handler queues itself (RabbitMQ), or None (Celery's routing).
    topology: Topology | None = None

    def close(self) -> None:
        if self.recovery is not None:
            self.recovery.stop()
        self.transport.close()
        self.registry.close()
        self.state.close()
