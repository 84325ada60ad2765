"""The relay: a wide fan-out costs the publisher one confirm, as a publish to one queue does.

RabbitMQ confirms a persistent message once every queue it was routed to has it on disk, so a
publish to the events exchange routed to 100 quorum queues waits 7-9 ms for its confirm
against 0.5-1 ms routed to one (benchmarks/SPIKE.md). A publish that matches more
subscriptions than ``relay_fanout_above`` therefore sends the same single message, confirmed
and ``mandatory``, to ONE durable **intake queue** (``{base}.relay``, quorum; ``{base}.relay.
classic`` for services on classic queues), its routing key in the :data:`ROUTE_HEADER`
header. Every worker of every service on the broker runs a :class:`Relay` (a worker bootstep,
a thread with its own connection, consuming before the worker says ready) that takes intake
messages, republishes each unchanged to the events exchange with ``mandatory`` and confirms,
and acks the intake copy only after the broker confirmed the republish.

- **Atomic**: the publisher's message is in the intake queue or not (one queue, one confirm);
  the republish is one message routed by the broker to every subscriber's queue in one step.
- **Nothing lost**: an intake copy is acked after its republish is confirmed; a relay killed
  in between leaves it unacked, the broker gives it to another relay (or this one, restarted)
  and it is republished: the copies carry the same message id, so every handler's delivery
  has the same task id (:func:`~.topology.delivery_id`) and the inbox skips the second.
- **Pipelined**: republishes are not waited for one by one; up to :data:`WINDOW` intake
  messages per queue are in flight, and each confirm (RabbitMQ confirms several at once)
  acks the intake copies it covers.
- **Unroutable** (``basic.return``: a subscriber's queue was deleted): the relay declares the
  queues of the event's subscriptions from their registry records, with their owners'
  arguments (the transport's logic), and republishes. An event that no subscription matches
  any more (every subscriber unsubscribed since it was published) is what a publish with no
  subscriber is: nothing to deliver. It is logged as a warning and counted
  (``Relay.stats["no_subscriber"]``) and its intake copy acked; dead-lettering it would keep
  a message nobody may replay (a dead letter is a handler's). An event that stays unroutable
  though it has subscriptions (:data:`ATTEMPTS` tries) is logged as an error, counted
  (``"unroutable"``) and acked, so it cannot wedge the intake queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol, cast

import amqp
from celery import bootsteps
from kombu.connection import Connection

from ... import _buses
from ...errors import ConfigurationError, describe
from .topology import Topology


class _Declarer(Protocol):
    """What the relay uses of the backend's transport (``AmqpTransport``)."""

    broker_url: str
    timeout: float

    def _ensure_queues(self, link: Any, messages: Any, left: float) -> None:
        """Declare the queues of ``messages``' subscriptions on ``link`` (its ``channel()``,
        its ``declared`` and ``queues`` sets) with their records' arguments."""

log = logging.getLogger(__name__)

__all__ = [
    "ROUTE_HEADER",
    "Relay",
    "RelayStep",
    "declare_intake",
    "intake_name",
    "via_intake",
]

#: The header of an intake message naming the routing key (the event name) it is
#: republished with; the relay removes it.
ROUTE_HEADER = "celery_events_route"

#: Intake messages in flight per intake queue (the consumer's prefetch): republished, their
#: confirm awaited.
WINDOW = 256

#: Republishes of one returned event before the relay gives up on it (see the module).
ATTEMPTS = 3

#: The key under which a link remembers it declared the intake queue.
_DECLARED = "relay intake"

#: Headers the broker adds to a message it delivers (quorum queues count deliveries); not
#: carried into the republished copy.
_BROKER_HEADERS = ("x-delivery-count", "x-death", "x-first-death-exchange",
                   "x-first-death-queue", "x-first-death-reason")


def intake_name(topology: Topology, queue_type: str | None = None) -> str:
    """The intake queue of ``queue_type`` (default: the topology's)."""
    kind = queue_type or topology.queue_type
    base = f"{topology.base}.relay"
    return base if kind == "quorum" else f"{base}.{kind}"


def _intakes(topology: Topology) -> list[tuple[str, dict[str, Any]]]:
    # Every relay consumes both, so a publisher whose queue type no worker shares is relayed.
    return [
        (intake_name(topology, kind), {"x-queue-type": kind}) for kind in ("quorum", "classic")
    ]


def declare_intake(channel: Any, topology: Topology, declared: set[str]) -> None:
    """Declare the intake queue of the topology's queue type (once per ``declared`` set),
    with the arguments every declarer uses (only its type)."""
    if _DECLARED in declared:
        return
    kind = topology.queue_type
    channel.queue_declare(
        intake_name(topology), durable=True, auto_delete=False, arguments={"x-queue-type": kind}
    )
    declared.add(_DECLARED)


def forget_intake(declared: set[str]) -> None:
    """The intake queue was deleted: declare it again on the next publish."""
    declared.discard(_DECLARED)


def via_intake(
    topology: Topology, routing_key: str, message: amqp.Message
) -> tuple[str, str, amqp.Message]:
    """``message`` bound for the events exchange with ``routing_key``, sent to the intake
    queue instead (default exchange), its routing key in :data:`ROUTE_HEADER`."""
    headers = message.properties.setdefault("application_headers", {})
    headers[ROUTE_HEADER] = routing_key
    return "", intake_name(topology), message


@dataclass
class _InFlight:
    """An intake copy whose republish awaits its confirm."""

    tag: int
    message: amqp.Message
    route: str
    id: str
    attempts: int = 1


class _Link:
    """The relay's connection and its confirming channel, as the transport's declaration
    reads a link: ``channel()``, the ``declared`` and ``queues`` sets."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.confirmed: Any = None
        self.declared: set[str] = set()
        self.queues: set[tuple[str, str, float]] = set()

    def channel(self, left: float | None = None) -> Any:
        # ``left`` (the transport's publish deadline) does not bound the relay's own link.
        if self.confirmed is None:
            self.connection.ensure_connection(max_retries=1)
            channel = self.connection.channel()
            channel.confirm_select()
            self.confirmed = channel
        return self.confirmed

    def close(self) -> None:
        try:
            self.connection.release()
        except Exception:  # already gone; nothing to release
            pass


@dataclass
class _Wanted:
    """What the transport's queue declaration reads from a message: its subscription."""

    subscription: Any


class Relay:
    """Republishes intake messages to the events exchange (see the module)."""

    def __init__(
        self,
        broker_url: str,
        topology: Topology,
        transport: _Declarer,
        registry: Any,
        ssl: Any = False,
        timeout: float = 5.0,
        window: int = WINDOW,
    ) -> None:
        self.broker_url = broker_url
        self.topology = topology
        #: The backend's AmqpTransport: declares returned events' queues from their records.
        self.transport = transport
        #: Has ``match(name)`` -> subscriptions (the bus's registry view).
        self.registry = registry
        self.ssl = ssl
        self.timeout = timeout
        self.window = window
        #: relayed, returned, redeclared, no_subscriber, unroutable, malformed, nacked.
        self.stats: Counter[str] = Counter()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        # Per session (connection):
        self._link: Any = None
        self._consume: Any = None
        self._seq = 0
        self._pending: dict[int, _InFlight] = {}
        self._returned: set[str] = set()
        self._retry: list[_InFlight] = []
        self._done: list[int] = []
        self._nacked: list[int] = []
        # Across sessions: ids whose returned republish failed to declare its queues.
        self._failures: Counter[str] = Counter()

    # -- life -----------------------------------------------------------------------------

    def start(self, wait: float | None = None) -> None:
        """Start the relay thread and return once it consumes the intake queues, or raise
        :class:`ConfigurationError` if it cannot within ``wait`` seconds."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="celery-events-relay", daemon=True)
        self._thread.start()
        limit = wait if wait is not None else max(10.0, 2 * self.timeout)
        if not self._ready.wait(limit):
            self.stop()
            raise ConfigurationError(
                f"The celery-events relay could not consume its intake queue"
                f" {intake_name(self.topology)!r} on RabbitMQ within {limit:g} s"
                f" ({describe(self._error) if self._error else 'no answer'}). Check that the"
                " broker is reachable and that the worker's user may declare and consume"
                " queues."
            )

    def stop(self, wait: float = 5.0) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(wait)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._ready.is_set() and self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        pause = 0.1
        while not self._stop.is_set():
            try:
                self._session()
                pause = 0.1
            except Exception as exc:  # the connection died; its unacked copies are requeued
                self._error = exc
                if self._stop.is_set():
                    break
                log.warning(
                    "celery-events: the relay lost RabbitMQ, reconnecting in %g s: %s",
                    pause,
                    describe(exc),
                )
                self._stop.wait(pause)
                pause = min(pause * 2, 5.0)

    # -- one connection -------------------------------------------------------------------

    def _session(self) -> None:
        connection = Connection(
            self.broker_url, ssl=self.ssl, connect_timeout=self.timeout, heartbeat=30
        )
        link = _Link(connection)
        self._link = link
        self._seq = 0
        self._pending = {}
        self._returned = set()
        self._retry = []
        self._done = []
        self._nacked = []
        try:
            publish = link.channel()
            publish.events["basic_ack"].add(self._on_ack)
            publish.events["basic_nack"].add(self._on_nack)
            publish.events["basic_return"].add(self._on_return)
            consume = self._consume = connection.channel()
            consume.basic_qos(0, self.window, False)
            for name, arguments in _intakes(self.topology):
                consume.queue_declare(name, durable=True, auto_delete=False, arguments=arguments)
                consume.basic_consume(name, callback=self._on_message, no_ack=False)
            self._error = None
            self._ready.set()
            log.info("celery-events: relaying %s", ", ".join(n for n, _ in _intakes(self.topology)))
            while not self._stop.is_set():
                try:
                    connection.drain_events(timeout=0.5)
                except TimeoutError:
                    pass
                self._settle()
                connection.heartbeat_check()
        finally:
            self._consume = None
            self._link = None
            link.close()

    # -- callbacks (inside drain_events: no synchronous broker calls here) -----------------

    def _on_message(self, message: amqp.Message) -> None:
        tag = message.delivery_tag
        headers = message.properties.get("application_headers")
        route = headers.get(ROUTE_HEADER) if isinstance(headers, dict) else None
        if not isinstance(route, str) or not route:
            self.stats["malformed"] += 1
            log.error(
                "celery-events: a message on the relay's intake queue has no %s header;"
                " it was not published by celery-events, and is dropped (message id %r)",
                ROUTE_HEADER,
                message.properties.get("message_id"),
            )
            self._consume.basic_reject(tag, requeue=False)
            return
        assert isinstance(headers, dict)
        properties = dict(message.properties)
        properties["application_headers"] = {
            k: v for k, v in headers.items() if k != ROUTE_HEADER and k not in _BROKER_HEADERS
        }
        copy = amqp.Message(message.body, **properties)
        self._republish(
            _InFlight(tag, copy, route, str(properties.get("message_id") or ""))
        )

    def _republish(self, entry: _InFlight) -> None:
        self._link.confirmed.basic_publish(
            entry.message,
            exchange=self.topology.exchange_name,
            routing_key=entry.route,
            mandatory=True,
        )
        # Numbered once it is on the wire: the broker numbers confirms in the order it got the
        # publishes, and a delivery read while this one was written is published first.
        self._seq += 1
        self._pending[self._seq] = entry

    def _confirmed(self, tag: int, multiple: bool) -> list[_InFlight]:
        if not multiple:
            entry = self._pending.pop(tag, None)
            return [entry] if entry is not None else []
        seqs = [s for s in self._pending if s <= tag]
        return [self._pending.pop(s) for s in seqs]

    def _on_ack(self, tag: int, multiple: bool) -> None:
        for entry in self._confirmed(tag, multiple):
            # RabbitMQ sends basic.return before the confirm of a message no queue took.
            if entry.id in self._returned:
                self._returned.discard(entry.id)
                self.stats["returned"] += 1
                self._retry.append(entry)
            else:
                self.stats["relayed"] += 1
                self._done.append(entry.tag)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        for entry in self._confirmed(tag, multiple):
            self.stats["nacked"] += 1
            self._nacked.append(entry.tag)

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        self._returned.add(str(message.properties.get("message_id") or ""))

    # -- after each read: ack, requeue, declare ---------------------------------------------

    def _settle(self) -> None:
        consume = self._consume
        if self._nacked:
            # The broker could not take the republish: the copy goes back for another try.
            for tag in self._nacked:
                consume.basic_reject(tag, requeue=True)
            self._nacked = []
        if self._retry:
            retry, self._retry = self._retry, []
            for entry in retry:
                self._reroute(entry)
        if self._done:
            done, self._done = self._done, []
            top = max(done)
            waiting = [e.tag for e in self._pending.values()]
            waiting += [e.tag for e in self._retry]
            if not waiting or min(waiting) > top:
                consume.basic_ack(top, multiple=True)
            else:
                for tag in done:
                    consume.basic_ack(tag)

    def _reroute(self, entry: _InFlight) -> None:
        name = entry.route
        subscriptions = list(self.registry.match(name)) if self.registry is not None else []
        if not subscriptions:
            self.stats["no_subscriber"] += 1
            log.warning(
                "celery-events: the relay got event %r (message %s) back from RabbitMQ and no"
                " subscription matches it any more (its subscribers unsubscribed since it was"
                " published); nothing to deliver",
                name,
                entry.id,
            )
            self._done.append(entry.tag)
            return
        if entry.attempts >= ATTEMPTS or self._failures[entry.id] >= ATTEMPTS:
            self.stats["unroutable"] += 1
            log.error(
                "celery-events: the relay gave up on event %r (message %s): RabbitMQ returned"
                " it %d times although %d subscriptions match it (their queues: %s). Restart"
                " the subscribers' workers to declare their queues, then publish it again.",
                name,
                entry.id,
                entry.attempts,
                len(subscriptions),
                ", ".join(sorted(s.queue for s in subscriptions)),
            )
            self._failures.pop(entry.id, None)
            self._done.append(entry.tag)
            return
        link = self._link
        # The link's memory of declared queues is what turned out wrong: declare them all.
        link.declared.clear()
        link.queues.clear()
        try:
            self.transport._ensure_queues(
                link, [_Wanted(s) for s in subscriptions], self.transport.timeout
            )
        except Exception:
            # A refused declare closes the channel, so this session ends; the copy comes back
            # (unacked) and is counted towards giving up.
            self._failures[entry.id] += 1
            raise
        self.stats["redeclared"] += 1
        entry.attempts += 1
        self._republish(entry)


class RelayStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs the worker's :class:`Relay` from after the pool starts until the worker stops;
    before the consumer, so the worker says ready only once the relay consumes."""

    label = "celery-events relay"
    # After the start-up check: a misconfigured worker stops before the relay connects (which
    # could wait out its timeout first and hide the reason).
    requires = ("celery.worker.components:Pool", "celery_events._worker:StartupCheck")

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.relay: Relay | None = None

    def start(self, parent: Any) -> None:
        bus = _buses.for_app(parent.app)
        if bus is None:
            return
        backend = bus.backend
        # This step is added by the amqp backend's transport only (prepare_worker).
        transport = cast(_Declarer, backend.transport)
        started = time.monotonic()
        self.relay = Relay(
            transport.broker_url,
            cast(Topology, backend.topology),
            transport,
            cast(Any, bus).registry,
            ssl=parent.app.conf.broker_use_ssl or False,
            timeout=transport.timeout,
        )
        self.relay.start()
        log.debug("celery-events: relay started in %.3f s", time.monotonic() - started)

    def stop(self, parent: Any) -> None:
        if self.relay is not None:
            self.relay.stop()
            self.relay = None

    def terminate(self, parent: Any) -> None:
        self.stop(parent)

