"""Publishing on RabbitMQ: one message per event, routed by the broker to every subscriber.

A publish sends ONE Celery protocol-2 message (task :data:`~.topology.FANOUT_TASK`, its own
id) to the events exchange with the event name as routing key, ``mandatory`` set and with
publisher confirms, on a connection of its own (Celery's producer pool makes no confirm
promise). RabbitMQ routes a message to every bound queue in one step, so a publisher killed at
any moment leaves every subscriber with the event or none; the confirm says every queue has
it (on quorum queues: a majority of their replicas). A message no queue takes comes back
(``basic.return``, before the confirm) and is a :class:`PublishError`: nothing was queued.

Each delivery's task id is derived from the message id and the handler
(:func:`~.topology.delivery_id`): the publisher reports it in the ``PublishResult``, and the
worker gives it to the copy it takes from the handler's queue (``worker.py``).

Before the first publish to a subscription (per process and per registration of its
service), its queue is declared with the arguments its owner recorded with it, so an event
published before the subscriber's first worker started waits in its queue; afterwards a
publish is one ``basic.publish`` and one confirm. ``task-sent`` events (one per delivery, for
Flower) go in one more message, on a second channel without confirms.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import amqp
from amqp import spec
from celery import Celery, signals
from kombu.connection import Connection
from kombu.exceptions import OperationalError as KombuOperationalError

from ..._messages import SentEvents, TaskMessage, new_id
from ...errors import PublishError, describe
from ..base import QueueReader, RegistryStore, ServiceBus, send_each, send_in_thread
from . import relay
from .topology import FANOUT_TASK, Topology, delivery_ids, retry_token
from .worker import check_worker, prepare_worker

if TYPE_CHECKING:
    from ..base import Outgoing

log = logging.getLogger(__name__)

#: The longest wait for one node to accept a connection before the next is tried.
_CONNECT_TIMEOUT = 5.0

#: What a publish retries within publish_timeout: a lost connection or node, a confirm that
#: did not come (socket.timeout is an OSError), a nack, a channel error the broker may not
#: repeat (a queue's leader being elected). Refusals (IrrecoverableChannelError, caught
#: first) are not.
_RETRIED = (
    OSError,
    amqp.exceptions.ConnectionError,
    amqp.exceptions.ChannelError,
    amqp.exceptions.MessageNacked,
)

#: How Celery names the exchange of worker and task events (``event_exchange``).
_EVENTS_EXCHANGE = "celeryev"


class _Returned(Exception):
    """The broker returned the message: no queue is bound for it."""


class _Link:
    """One process's connection and its two channels (confirming, and not).

    The connection outlives a broker failure: kombu's ``Connection`` holds the failover
    position in a ``;``-separated URL list, so after a node dies the next attempt goes to the
    next node instead of starting again at the first (dead) one.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.confirmed: Any = None
        self.events: Any = None
        self.returned: list[str] = []
        #: The exchanges and the services' queues (dead-letter, intake) declared on this
        #: connection (their declaration key).
        self.declared: set[str] = set()
        #: The subscriptions whose queue was declared on this connection: (queue, pattern,
        #: registered_at). A tuple, not a text: a publish to 100 looks up 100 of them, and
        #: formatting each float ``registered_at`` cost more than the rest of the lookup.
        self.queues: set[tuple[str, str, float]] = set()
        #: The queue being declared, for the message of a refusal.
        self.declaring: str | None = None
        #: True from sending a message until its confirm: a failure then may have queued it.
        self.unconfirmed = False

    def channel(self, left: float) -> Any:
        if self.confirmed is None:
            connection = self.connection
            # Each node once, from the current one, with no pause between nodes (kombu
            # pauses only after a full cycle, which max_retries stops short of): the pause
            # between rounds is the caller's, bounded by publish_timeout.
            connection.ensure_connection(
                max_retries=max(len(connection.alt or ()) - 1, 0),
                timeout=max(left, 0.1),
            )
            channel = connection.channel()
            channel.confirm_select()
            channel.events["basic_return"].add(self._on_return)
            self.confirmed = channel
        return self.confirmed

    def events_channel(self) -> Any:
        if self.events is None:
            self.events = self.connection.channel()
        return self.events

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        self.returned.append(str(message.properties.get("message_id") or ""))

    def fail(self, established: bool) -> None:
        """Forget the broken connection; after losing an established one, fail over."""
        self.confirmed = self.events = None
        self.declared.clear()
        self.queues.clear()
        self.declaring = None
        self.unconfirmed = False
        connection = self.connection
        try:
            # No goodbye on a dead socket (a close would wait for the broker's reply).
            connection.collect(socket_timeout=0.1)
        except Exception:  # already gone; nothing to release
            pass
        if established:
            # The node we were connected to failed: the next attempt starts at the next one
            # (a connect failure has moved on already, inside ensure_connection).
            connection.maybe_switch_next()

    def close(self) -> None:
        try:
            self.connection.release()
        except Exception:  # already gone; nothing to release
            pass


class AmqpTransport:
    """The RabbitMQ backend's transport (see the module docstring)."""

    #: The catalog learns publishers here (once per name and process), after the confirm.
    records_catalog = True
    # _shared() derives each delivery's id from the one message's.
    assigns_task_ids = True

    def __init__(
        self,
        app: Celery,
        broker_url: str,
        topology: Topology,
        timeout: float,
        registry: RegistryStore | None = None,
        settings: Any = None,
    ) -> None:
        self.app = app
        self.broker_url = broker_url
        self.topology = topology
        self.timeout = timeout
        self.registry = registry
        self.settings = settings
        self._link: _Link | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._sent_events: SentEvents | None = None

    # -- publishing -----------------------------------------------------------------------

    def send_many(self, batches: Sequence[Outgoing]) -> None:
        # Not atomic across events: each is sent as publish sends it (see send_each).
        send_each(self, batches)

    async def asend_many(self, batches: Sequence[Outgoing]) -> None:
        # kombu has no asyncio API (py-amqp neither): the blocking send, in a thread.
        await send_in_thread(self, batches)

    async def aclose(self) -> None:
        """Nothing is opened per event loop."""

    def send(self, messages: Sequence[TaskMessage], catalog: tuple[str, str] | None) -> None:
        if not messages:
            return
        deadline = time.monotonic() + self.timeout
        pause = 0.05
        relayed = False
        if messages[0].direct:
            outgoing = [self._direct(m) for m in messages]
        else:
            outgoing = [self._shared(messages)]
            # A wide fan-out goes through the relay: one queue's confirm (relay.py).
            above = self.settings.relay_fanout_above
            relayed = above is not None and len(messages) > above
            if relayed:
                outgoing = [relay.via_intake(self.topology, *outgoing[0][1:])]
        intake_again = relayed
        # A message that may have reached the broker in an attempt that failed: a lost
        # confirm. Sent again it carries the same id, so every handler's delivery has the
        # same task id, which its inbox absorbs.
        maybe_queued = False
        while True:
            established = True
            try:
                with self._lock:
                    link = self._current_link()
                    try:
                        left = deadline - time.monotonic()
                        if not messages[0].direct:
                            self._ensure_queues(link, messages, left)
                        if relayed:
                            relay.declare_intake(link.channel(left), self.topology, link.declared)
                        for exchange, routing_key, message in outgoing:
                            self._publish(link, exchange, routing_key, message, deadline)
                    finally:
                        maybe_queued = maybe_queued or link.unconfirmed
                        link.unconfirmed = False
                break
            except _Returned:
                if intake_again:  # the intake queue was deleted: declare it again, once
                    intake_again = False
                    relay.forget_intake(self._current_link().declared)
                    continue
                raise PublishError(_unroutable(messages)) from None
            except amqp.exceptions.IrrecoverableChannelError as exc:
                declaring = self._link.declaring if self._link is not None else None
                self._drop_channel()
                raise PublishError(_refused(exc, declaring, maybe_queued)) from exc
            except KombuOperationalError as exc:
                # kombu's wrapping of a failed connect: ensure_connection tried every node.
                failure: BaseException = exc
                established = False
            except _RETRIED as exc:
                failure = exc
            self._fail_link(established)
            left = deadline - time.monotonic()
            if left <= pause:
                raise PublishError(_not_confirmed(self.timeout, failure, maybe_queued)) from failure
            log.warning("celery-events: publish failed, retrying: %s", describe(failure))
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
        if signals.after_task_publish.receivers:
            if messages[0].direct:
                sent = [(route[0], route[1], m) for route, m in zip(outgoing, messages, strict=True)]
            else:
                sent = [(outgoing[0][0], outgoing[0][1], m) for m in messages]
            for exchange, routing_key, message in sent:
                signals.after_task_publish.send(
                    sender=message.task_name,
                    body=message.body,
                    headers=message.headers,
                    exchange=exchange,
                    routing_key=routing_key,
                )
        self._send_events(messages)
        if catalog is not None and self.registry is not None:
            try:
                self.registry.record_published(*catalog)
            except Exception as exc:  # the catalog is a convenience; never fail a publish
                log.debug("celery-events: could not record %r in the catalog: %s", catalog, exc)

    def _shared(self, messages: Sequence[TaskMessage]) -> tuple[str, str, amqp.Message]:
        """The one message of a publish; gives every delivery its derived task id."""
        first = messages[0]
        parts = first.parts
        shared_id = new_id()
        ids = delivery_ids(shared_id, [message.task_name for message in messages])
        for message, task_id in zip(messages, ids, strict=True):
            message.task_id = task_id
            message._headers = None
            message._properties = None
        name = str(parts.envelope["type"])
        _before_publish(messages, self.topology.exchange_name, name)
        headers = dict(first.headers)
        headers.update(task=FANOUT_TASK, id=shared_id, shadow=name, root_id=parts.root_id)
        return self.topology.exchange_name, name, self._message(first, headers, shared_id)

    def _direct(self, message: TaskMessage) -> tuple[str, str, amqp.Message]:
        """A message to one handler's queue alone (a replay), through the retry exchange."""
        exchange, token = self.topology.retry_exchange_name, retry_token(message.queue)
        _before_publish([message], exchange, token)
        return exchange, token, self._message(message, message.headers, message.task_id)

    def _message(self, message: TaskMessage, headers: dict[str, Any], id: str) -> amqp.Message:
        parts = message.parts
        return amqp.Message(
            base64.b64decode(parts.body_b64),
            content_type="application/json",
            content_encoding="utf-8",
            application_headers=headers,
            delivery_mode=parts.delivery_mode,
            correlation_id=id,
            message_id=id,
            reply_to=parts.reply_to,
            priority=0,
        )

    def _publish(
        self, link: _Link, exchange: str, routing_key: str, message: amqp.Message, deadline: float
    ) -> None:
        channel = link.channel(deadline - time.monotonic())
        link.returned.clear()
        # What is left of publish_timeout, so retries stay within it.
        left = max(deadline - time.monotonic(), 0.1)
        # Publish, then wait for the confirm, as basic_publish_confirm does, but knowing which
        # failed: a message not wholly written cannot have been queued; one written and not
        # confirmed may have been.
        channel.basic_publish(
            message, exchange=exchange, routing_key=routing_key, mandatory=True, timeout=left
        )
        link.unconfirmed = True
        channel.wait([spec.Basic.Ack, spec.Basic.Nack], callback=_on_confirm, timeout=left)
        link.unconfirmed = False
        # RabbitMQ sends basic.return before the confirm of a message no queue took.
        if link.returned:
            raise _Returned

    # -- declaring ------------------------------------------------------------------------

    def _ensure_queues(self, link: _Link, messages: Sequence[TaskMessage], left: float) -> None:
        topology = self.topology
        for message in messages:
            subscription = message.subscription
            if subscription is None:
                continue
            key = (subscription.queue, subscription.pattern, subscription.registered_at)
            if key in link.queues:
                continue
            channel = link.channel(left)
            link.declaring = subscription.queue
            arguments = subscription.arguments
            if not arguments:
                # A record without arguments (written before they were recorded): the queue
                # must exist already; a passive declare says so without changing it.
                channel.queue_declare(subscription.queue, passive=True)
            else:
                self._declare_exchanges(channel, link, subscription.service, arguments)
                channel.queue_declare(
                    subscription.queue, durable=True, auto_delete=False, arguments=arguments
                )
                channel.queue_bind(
                    subscription.queue, topology.exchange_name, subscription.pattern
                )
                channel.queue_bind(
                    subscription.queue,
                    topology.retry_exchange_name,
                    f"#.{retry_token(subscription.queue)}",
                )
            link.queues.add(key)
        link.declaring = None

    def _declare_exchanges(
        self, channel: Any, link: _Link, service: str, arguments: dict[str, Any]
    ) -> None:
        topology = self.topology
        if "exchanges" not in link.declared:
            for exchange in (topology.exchange(), topology.retry_exchange(), topology.dead_exchange()):
                channel.exchange_declare(exchange.name, exchange.type, durable=True, auto_delete=False)
            link.declared.add("exchanges")
        dead = f"dead {service}"
        if dead not in link.declared:
            # Without its dead-letter queue, what the broker dead-letters would be dropped.
            queue_type = arguments.get("x-queue-type", topology.queue_type)
            name = topology.dead_queue_name(service)
            channel.queue_declare(
                name, durable=True, auto_delete=False, arguments={"x-queue-type": queue_type}
            )
            channel.queue_bind(name, topology.dead_exchange_name, service)
            link.declared.add(dead)

    # -- task-sent events -------------------------------------------------------------------

    def _send_events(self, messages: Sequence[TaskMessage]) -> None:
        if not self.app.conf.task_send_sent_event:
            return
        events = self._sent_events
        if events is None:
            events = self._sent_events = SentEvents(self.app, 0)
        dispatcher = self.app.amqp._event_dispatcher
        try:
            with self._lock:
                link = self._current_link()
                channel = link.events_channel()
                if "celeryev" not in link.declared:
                    channel.exchange_declare(
                        _EVENTS_EXCHANGE, "topic", durable=True, auto_delete=False
                    )
                    link.declared.add("celeryev")
                now = time.time()
                forward = dispatcher.clock.forward
                batch = [events.event(message, forward(), now) for message in messages]
                # One message holding every delivery's event, as Celery's own dispatcher
                # flushes a group ("task.multi"); Celery's event receiver, Flower's, takes a
                # list of events in one body.
                channel.basic_publish(
                    amqp.Message(
                        _json(batch if len(batch) > 1 else batch[0]),
                        content_type="application/json",
                        content_encoding="utf-8",
                        application_headers=dict(dispatcher.headers),
                        delivery_mode=dispatcher.delivery_mode,
                    ),
                    exchange=_EVENTS_EXCHANGE,
                    routing_key="task.multi" if len(batch) > 1 else "task.sent",
                )
        except Exception as exc:  # Flower's view; the deliveries are confirmed already
            self._fail_link(True)
            log.warning("celery-events: could not send task-sent events: %s", describe(exc))

    # -- the connection ---------------------------------------------------------------------

    def _current_link(self) -> _Link:
        pid = os.getpid()
        if self._link is None or self._pid != pid:
            # A forked child must not share its parent's socket.
            # A node that does not answer is skipped for the next one after a few seconds
            # (a refused connection, a dead node's, fails at once).
            connect_timeout = min(self.timeout, _CONNECT_TIMEOUT)
            self._link = _Link(
                Connection(
                    self.broker_url,
                    ssl=self.app.conf.broker_use_ssl or False,
                    connect_timeout=connect_timeout,
                    heartbeat=0,
                )
            )
            self._pid = pid
        return self._link

    def _drop_channel(self) -> None:
        link = self._link
        if link is not None:
            # The broker closed the channel (a refused declare): open another next time.
            link.confirmed = None
            link.events = None

    def _fail_link(self, established: bool) -> None:
        link = self._link
        if link is not None:
            link.fail(established)

    def _drop_link(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()

    # -- the worker side --------------------------------------------------------------------

    def prepare_worker(self, bus: ServiceBus) -> None:
        prepare_worker(bus, self.topology)
        bus.app.steps["worker"].add(relay.RelayStep)

    def check_worker(self, bus: ServiceBus) -> None:
        check_worker(bus, self.topology, self.broker_url)

    def queue_reader(self, timeout: float) -> QueueReader:
        # Imported when asked: only `celery eventbus status` reads queues.
        from .status import AmqpQueues

        reader: QueueReader = AmqpQueues.from_app(self.app, self.settings.management_url, timeout)
        return reader

    def close(self) -> None:
        with self._lock:
            self._drop_link()


def _on_confirm(method: Any, *args: Any) -> None:
    if method == spec.Basic.Nack:
        raise amqp.exceptions.MessageNacked()


def _before_publish(messages: Sequence[TaskMessage], exchange: str, routing_key: str) -> None:
    """Celery's ``before_task_publish``, once per delivery, as ``send_task`` fires it.

    Tracing tools (Sentry, OpenTelemetry) add headers there. A publish is one message, so what
    a receiver adds to the first delivery's headers is what every copy carries.
    """
    if not signals.before_task_publish.receivers:
        return
    for message in messages:
        signals.before_task_publish.send(
            sender=message.task_name,
            body=message.body,
            exchange=exchange,
            routing_key=routing_key,
            declare=[],
            headers=message.headers,
            properties=message.properties,
            retry_policy=None,
        )


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _not_confirmed(timeout: float, exc: BaseException, maybe_queued: bool) -> str:
    text = (
        f"RabbitMQ did not confirm the event within publish_timeout ({timeout:g} s):"
        f" {describe(exc)}."
    )
    if maybe_queued:
        return (
            f"{text} It may have been queued (a confirm was lost); publishing the same event"
            " again (bus.publish_event) is safe, as subscribers' inboxes skip an event id they"
            " already handled."
        )
    return (
        f"{text} It was not queued (no broker took the message); check that a RabbitMQ node"
        " of the broker URL is reachable, or raise publish_timeout to wait out a restart."
    )


def _refused(exc: BaseException, queue: str | None, maybe_queued: bool = False) -> str:
    if maybe_queued:
        text = (
            f"RabbitMQ refused the event: {describe(exc)}. An earlier attempt's confirm was"
            " lost, so it may have been queued; publishing the same event again"
            " (bus.publish_event) is safe."
        )
    else:
        text = f"RabbitMQ refused the event: {describe(exc)}. No delivery was sent."
    if queue is None:
        return text
    if isinstance(exc, amqp.exceptions.PreconditionFailed):
        return (
            f"{text} The subscriber's queue {queue!r} exists with other arguments than its"
            " owner recorded in the registry (its queue_type changed?): restart the owning"
            " service's workers, which refuse to start and name the fix."
        )
    if isinstance(exc, amqp.exceptions.NotFound):
        return (
            f"{text} The subscriber's queue {queue!r} does not exist, and its registry record"
            " (written by an older version) does not say how to declare it: restart the"
            " owning service's workers to declare it and record its arguments."
        )
    return text


def _unroutable(messages: Sequence[TaskMessage]) -> str:
    name = messages[0].parts.envelope.get("type")
    queues = ", ".join(sorted({m.queue for m in messages}))
    return (
        f"RabbitMQ returned event {name!r}: no queue is bound for it (the subscriptions name"
        f" {queues}), so no delivery was sent. A subscriber's queue was deleted or unbound;"
        " restart its worker (or call its bus.register()) to declare it again."
    )
