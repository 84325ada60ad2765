"""The worker side on RabbitMQ: consume each handler's own queue, screened.

``prepare_worker`` adds :class:`EventQueues`, a consumer bootstep (Celery's documented
``bootsteps.ConsumerStep``), to the worker. It declares and consumes every handler's queue
with the owner's arguments (:mod:`.topology`) on a channel of the worker's connection, one
kombu consumer per queue, so each copy's queue is known from the consumer that got it (no
consumer-tag lookup). Celery's own task consumer never consumes these queues (``select_add``
would replace their Queue objects with plain classic ones).

Each message is screened before Celery sees it:

- the shared message of a publish (task :data:`~.topology.FANOUT_TASK`) becomes that queue's
  handler's delivery: its task name, its derived task id (:func:`~.topology.delivery_id`, the
  one the publisher reported) and its shown name, rewritten in the headers before the
  Request is made; then the handler's own Celery strategy takes it, so ``acks_late``,
  ``reject_on_worker_lost``, retries and Flower's task-received rows are per delivery;
- a message of the queue's own handler (a retry, a replay) goes to that strategy as it is;
- anything else (another task, headers or a body Celery cannot read) is rejected without
  requeue: the broker dead-letters it to the service's dead-letter queue, and it never runs.

The same step consumes the service's dead-letter queue and stores what the broker put there
(the queue's delivery limit, what screening refused) as the bus's dead letters; a store that
cannot take one leaves the message there and tries again a little later.

``check_worker`` refuses to start a worker whose queues exist with other arguments than the
ones it declares, and, on classic queues (where a retry waits in the worker), one whose longest
retry wait is longer than the broker's ``consumer_timeout`` (the ``broker_consumer_timeout``
setting): RabbitMQ would close the channel and the delivery would run again.
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from celery import bootsteps
from celery.exceptions import InvalidTaskError
from kombu.connection import Connection
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.messaging import Consumer
from kombu.transport.native_delayed_delivery import (
    CELERY_DELAYED_DELIVERY_EXCHANGE,
    declare_native_delayed_delivery_exchanges_and_queues,
)

from ... import _buses, _selection
from ...deadletters import Reason, new_letter
from ...errors import CeleryEventsError, ConfigurationError, describe
from ..base import ServiceBus
from .topology import FANOUT_TASK, Topology, delivery_id, handler_queue, retry_token

log = logging.getLogger(__name__)

__all__ = ["EventQueues", "check_worker", "prepare_worker"]

#: What Celery raises for a message it cannot read (its on_task_received's own list).
_UNREADABLE = (InvalidTaskError, ContentDisallowed, DecodeError)

# How long a dead letter the store could not take waits before it is tried again.
_DEAD_LETTER_RETRY = 5.0


def _handlers(bus: ServiceBus) -> list[Any]:
    return list(getattr(bus, "handlers", []))


def prepare_worker(bus: ServiceBus, topology: Topology) -> None:
    """Add the consumer bootstep; confirm the worker's own publishes (handler retries)."""
    app = bus.app
    app.steps["consumer"].add(EventQueues)
    options = dict(app.conf.broker_transport_options or {})
    # A retry is published before its delivery is acked: unconfirmed, a broker crash in
    # between would lose it.
    options.setdefault("confirm_publish", True)
    app.conf.broker_transport_options = options
    if "broker_channel_error_retry" not in app.conf.changes:
        # On a cluster, a classic queue (Celery's default queue 'celery') lives on one node:
        # while that node is down its declare is a channel error (404 "home node ... is
        # down"), which would stop the worker for good. Retried like a lost connection, the
        # consumer starts again, and consumes its event queues (quorum: on every node) again,
        # once the declare succeeds.
        app.conf.broker_channel_error_retry = True


def check_worker(bus: ServiceBus, topology: Topology, broker_url: str) -> None:
    """Raise :class:`ConfigurationError` if this worker must not start (see the module)."""
    settings = bus.settings
    wait = bus.longest_delivery_wait
    if topology.queue_type == "classic" and wait > settings.broker_consumer_timeout:
        raise ConfigurationError(
            f"Service {bus.service!r} has handlers whose retry wait plus time limit reaches"
            f" {wait:g} s, longer than the broker's consumer_timeout"
            f" ({settings.broker_consumer_timeout:g} s, the broker_consumer_timeout setting);"
            " on classic queues a retry waits in the worker, and RabbitMQ would close its"
            " channel and deliver it again. Use queue_type='quorum' (retries then wait in"
            " RabbitMQ), lower retry_backoff_max and the handlers' time limits, or raise"
            " consumer_timeout in rabbitmq.conf and broker_consumer_timeout with it."
        )
    try:
        with Connection(broker_url, ssl=bus.app.conf.broker_use_ssl or False) as connection:
            declare(connection, bus, topology)
    except CeleryEventsError:
        raise
    except Exception as exc:  # kombu and py-amqp raise transport-specific errors
        raise ConfigurationError(
            f"Could not declare the event queues of service {bus.service!r} on RabbitMQ:"
            f" {describe(exc)}. Check that the broker is reachable and that its user may"
            " declare exchanges and queues."
        ) from exc


def declare(connection: Connection, bus: ServiceBus, topology: Topology) -> None:
    """Declare the service's exchanges and queues with its arguments, and the native
    delayed delivery that brings long retries back; a queue that exists with other
    arguments is a :class:`ConfigurationError` naming it."""
    service = bus.service
    arguments = topology.queue_arguments(service)
    queues = [
        topology.handler_queue(
            handler_queue(h.queue, h.task_name), h.pattern, arguments
        )
        for h in _handlers(bus)
    ]
    queues.append(topology.dead_queue(service))
    import amqp

    for queue in queues:
        channel = connection.channel()
        try:
            queue(channel).declare()
        except amqp.exceptions.PreconditionFailed as exc:
            raise ConfigurationError(
                f"The queue {queue.name!r} exists on RabbitMQ with other arguments than"
                f" service {service!r} declares it with ({json.dumps(getattr(queue, 'queue_arguments', None) or {})}):"
                f" {describe(exc)}. Once it is empty, delete it (rabbitmqctl delete_queue"
                f" {queue.name}) and start the worker again, or set queue_type to the type it"
                " has."
            ) from None
        finally:
            try:
                channel.close()
            except Exception:  # closed by the broker with the refusal
                pass
    # Long retries wait in RabbitMQ's TTL queues (Celery's native delayed delivery), which
    # hand them to celery_delayed_delivery with the delay's bits before the routing key;
    # the retry exchange takes them from there by each queue's token. (kombu's
    # bind_queue_to_native_delayed_delivery_exchange would bind the events exchange too, and
    # a delayed message would then be copied to every subscriber of its key.)
    declare_native_delayed_delivery_exchanges_and_queues(connection, "quorum")
    channel = connection.channel()
    try:
        for h in _handlers(bus):
            token = retry_token(handler_queue(h.queue, h.task_name))
            channel.exchange_bind(
                destination=topology.retry_exchange_name,
                source=CELERY_DELAYED_DELIVERY_EXCHANGE,
                routing_key=f"#.{token}",
            )
    finally:
        channel.close()


class EventQueues(bootsteps.ConsumerStep):  # type: ignore[misc]
    """Consumes the bus's handler queues and its dead-letter queue (see the module)."""

    label = "celery-events RabbitMQ queues"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.c = parent

    def start(self, c: Any) -> None:
        """Make this connection's consumers (each start: the first, and every restart after
        a lost connection, makes them on the new connection's channel).

        With an event loop (the prefork pool), consuming waits for
        :meth:`register_with_event_loop`, as Celery's own task consumer does: a message
        waiting in a queue is delivered as soon as the queue is consumed (during the next
        synchronous broker call), and handed to the pool before the pool is registered with
        the loop it fails (``'NoneType' object is not callable``).
        """
        channel = c.connection.channel()
        self.consumers = self.get_consumers(channel)
        if c.hub is None:
            self._consume()

    def register_with_event_loop(self, c: Any, hub: Any) -> None:
        """Celery's event loop (re)started on this connection: start consuming."""
        self._consume()

    def _consume(self) -> None:
        for consumer in self.consumers or []:
            consumer.consume()

    def get_consumers(self, channel: Any) -> list[Consumer]:
        c = self.c
        bus = _buses.for_app(c.app)
        if bus is None:
            return []
        # This step is added by the amqp backend only, whose topology is a Topology.
        topology = cast(Topology, bus.backend.topology)
        service = bus.service
        arguments = topology.queue_arguments(service)
        prefetch = max(int(c.initial_prefetch_count or 0), 1)
        consumers = []
        queues: dict[str, str] = {}
        # The handlers whose queues this worker's -Q and -X leave it (_selection.py).
        selected = _selection.consumed_handlers(bus)
        consumed: list[str] = []
        for handler in _handlers(bus):
            name = handler_queue(handler.queue, handler.task_name)
            # Every handler's, for the dead letters of the service's queue, which the worker
            # consumes whatever -Q says.
            queues[name] = handler.task_name
            if handler.task_name not in selected:
                continue
            consumed.append(name)
            queue = topology.handler_queue(name, handler.pattern, arguments)
            consumers.append(
                Consumer(
                    channel,
                    queues=[queue],
                    on_message=_Screen(c, handler.task_name, name).on_message,
                    prefetch_count=prefetch,
                    no_ack=False,
                )
            )
        consumers.append(
            Consumer(
                channel,
                queues=[topology.dead_queue(service)],
                on_message=_DeadLetters(c, bus, queues).on_message,
                prefetch_count=prefetch,
                no_ack=False,
            )
        )
        log.info(
            "celery-events: consuming %s on RabbitMQ (%s queues)",
            ", ".join(sorted(consumed)) or "no handler queue",
            topology.queue_type,
        )
        return consumers


def _problem(headers: dict[str, Any], body: bytes) -> str | None:
    """What would make Celery stop or wedge on this message, or None (see DESIGN's facts:
    a dict ``id`` or a string ``timelimit`` kill a worker)."""
    if not isinstance(headers.get("id"), str) or not headers["id"]:
        return "its id is not a string"
    limits = headers.get("timelimit", [None, None])
    if not (
        isinstance(limits, (list, tuple))
        and len(limits) == 2
        and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in limits)
    ):
        return "its timelimit is not two numbers or nulls"
    if not isinstance(headers.get("retries", 0), int):
        return "its retries is not a number"
    for name in ("eta", "expires", "root_id", "parent_id", "shadow", "group"):
        if headers.get(name) is not None and not isinstance(headers[name], str):
            return f"its {name} is not a string"
    try:
        decoded = json.loads(body)
    except ValueError:
        return "its body is not JSON"
    if not (
        isinstance(decoded, list)
        and len(decoded) == 3
        and isinstance(decoded[0], list)
        and isinstance(decoded[1], dict)
        and isinstance(decoded[2], (dict, type(None)))
    ):
        return "its body is not a Celery task's [args, kwargs, embed]"
    return None


class _Screen:
    """The message handler of one handler queue."""

    def __init__(self, consumer: Any, handler: str, queue: str) -> None:
        self.consumer = consumer
        self.handler = handler
        self.queue = queue

    def refuse(self, message: Any, why: str) -> None:
        log.warning(
            "celery-events: a message on event queue %s %s; it is not run, and RabbitMQ"
            " dead-letters it",
            self.queue,
            why,
        )
        message.reject(requeue=False)

    def on_message(self, message: Any) -> None:
        headers = message.headers
        if not isinstance(headers, dict):
            return self.refuse(message, "has no headers")
        if message.content_type != "application/json":
            return self.refuse(message, f"is {message.content_type!r}, not JSON")
        task = headers.get("task")
        handler = self.handler
        if task == FANOUT_TASK:
            shared = headers.get("id")
            if not isinstance(shared, str) or not shared:
                return self.refuse(message, "is a publish without an id")
            task_id = delivery_id(shared, handler)
            headers["task"] = handler
            headers["id"] = task_id
            headers["shadow"] = f"{headers.get('shadow')} → {handler}"
            if not headers.get("root_id"):
                headers["root_id"] = task_id
            message.properties["correlation_id"] = task_id
        elif task != handler:
            return self.refuse(message, f"is task {task!r}, not {handler!r}")
        problem = _problem(headers, message.body)
        if problem is not None:
            return self.refuse(message, problem)
        c = self.consumer
        strategy = c.strategies.get(handler)
        if strategy is None:  # the worker's app lost the task: keep the message for another
            message.reject(requeue=True)
            return None
        try:
            strategy(message, None, message.ack_log_error, message.reject_log_error, c.on_task_message)
        except _UNREADABLE as exc:  # Celery refused the message itself
            self.refuse(message, f"could not be read by Celery ({describe(exc)})")
        except Exception:
            # The worker failed, not the message (not ready, shutting down): never
            # dead-letter a good message for that; it comes back, here or to another worker.
            log.exception(
                "celery-events: the worker could not take a message from %s; it is requeued",
                self.queue,
            )
            message.reject_log_error(log, c.connection_errors, requeue=True)
        return None


class _DeadLetters:
    """Turns what RabbitMQ dead-lettered into the bus's dead letters."""

    def __init__(self, consumer: Any, bus: Any, queues: dict[str, str]) -> None:
        self.consumer = consumer
        self.bus = bus
        self.queues = queues

    def on_message(self, message: Any) -> None:
        headers = message.headers if isinstance(message.headers, dict) else {}
        deaths = headers.get("x-death") or [{}]
        death = deaths[0] if isinstance(deaths, list) and isinstance(deaths[0], dict) else {}
        queue = str(death.get("queue") or "")
        handler = self.queues.get(queue)
        task = headers.get("task")
        why = str(death.get("reason") or "")
        envelope: dict[str, Any] | None = None
        raw: bytes | None = None
        try:
            decoded = json.loads(message.body)
            envelope = decoded[0][0] if isinstance(decoded[0][0], dict) else None
        except (ValueError, TypeError, IndexError, KeyError):
            raw = bytes(message.body)[:10000] if message.body else b""
        if why == "delivery_limit":
            reason = Reason.TOO_MANY_DELIVERIES
            text = (
                "RabbitMQ's delivery limit was reached: the message was delivered"
                f" {headers.get('x-delivery-count', 'too many')} times without being acked"
            )
        elif task in (handler, FANOUT_TASK) and envelope is not None:
            reason = Reason.UNREADABLE
            text = "the worker could not read the message as a Celery task"
        elif envelope is None:
            reason = Reason.UNREADABLE
            text = "the message on the event queue is not a Celery task with an envelope"
        else:
            reason = Reason.UNKNOWN_HANDLER
            text = (
                f"task {task!r} was sent to the event queue of {handler!r}; nothing but the"
                " handler runs from an event queue"
            )
        task_id = headers.get("id") if isinstance(headers.get("id"), str) else None
        if task == FANOUT_TASK and task_id and handler:
            task_id = delivery_id(task_id, handler)
        letter = new_letter(
            service=self.bus.service,
            reason=reason,
            error_type="DeadLettered" if reason != Reason.TOO_MANY_DELIVERIES else "PoisonMessageError",
            error_message=f"{text} ({why or 'dead-lettered'} from {queue or 'an event queue'}).",
            handler=handler,
            envelope=envelope,
            attempts=int(death.get("count") or 1),
            task_id=task_id,
            queue=queue or None,
            raw=raw,
            id=task_id,
        )
        try:
            self.bus.dead_letters.add(letter)
        except Exception as exc:
            log.warning(
                "celery-events: could not store a dead letter from %s, trying again in %g s: %s",
                queue,
                _DEAD_LETTER_RETRY,
                exc,
            )
            errors = self.consumer.connection_errors
            self.consumer.timer.call_after(
                _DEAD_LETTER_RETRY, message.reject_log_error, (log, errors, True)
            )
            return
        message.ack()
        try:
            self.bus.middleware.dead_lettered(letter)
        except Exception:  # listeners are told best-effort; the letter is stored
            log.exception("celery-events: a dead-letter listener failed")
