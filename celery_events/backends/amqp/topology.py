"""What the RabbitMQ backend declares, and what it names it: one place for every name.

- The **events exchange**: a durable topic exchange named from the ``key_prefix`` setting
  (``celery_events:`` -> ``celery_events``). A publish sends one message there with the event
  name as routing key; the broker copies it to every queue bound with a matching pattern (our
  patterns are AMQP topic patterns: ``*`` one word, ``#`` zero or more), in one routing step,
  so every subscriber gets the event or none does.
- One **queue per handler**, ``{handler's queue}.{handler's name}`` (``events.orders`` and
  ``orders.welcome_order`` -> ``events.orders.welcome_order``), bound to the events exchange
  with the handler's pattern. Its arguments (:func:`queue_arguments`) are the owner's: a
  quorum queue by default (classic with ``queue_type="classic"``), a delivery limit a little
  above ``max_deliveries`` on quorum (the inbox dead-letters a delivery started more than
  ``max_deliveries`` times; the broker's limit is the backstop for a message that kills its
  worker before the inbox is asked), and a dead-letter exchange. They travel in the
  subscription record, so a publisher that declares a missing queue declares it identically
  and never meets ``PRECONDITION_FAILED``.
- The **retry exchange** (``celery_events.retry``, topic): each handler queue is bound there
  with ``#.{token}``, ``token`` one word derived from the queue name (:func:`retry_token`). A
  retry goes there with routing key ``token``, to that queue alone, never through the events
  exchange (which would copy it to every subscriber again). ``#.`` lets Celery's native delayed
  delivery (``celery_delayed_delivery``, which prefixes the routing key with the delay's bits)
  bring a long retry back to the same queue; the retry exchange is bound to that exchange with
  the same key.
- The **dead-letter exchange** (``celery_events.dead``, direct) and one dead-letter queue per
  service (``celery_events.dead.{service}``, routing key the service): what the broker
  dead-letters (the delivery limit, a message the worker's screening refused) lands there, and
  the service's workers turn it into dead letters in the bus's store.

Nothing here talks to the broker: :mod:`.transport` and :mod:`.worker` declare what this
module describes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kombu.entity import Exchange, Queue, binding
from kombu.transport.native_delayed_delivery import calculate_routing_key, level_name

__all__ = [
    "FANOUT_TASK",
    "DELIVERY_LIMIT_MARGIN",
    "Topology",
    "delivery_id",
    "delivery_ids",
    "handler_queue",
    "retry_token",
]

#: The task name of the one message a publish sends: no task of that name ever runs; the
#: worker turns each copy into a delivery of the handler whose queue it came from.
FANOUT_TASK = "celery_events.fanout"

#: How many deliveries above ``max_deliveries`` a quorum queue allows before the broker
#: dead-letters the message itself: the inbox counts first; the broker is the backstop.
DELIVERY_LIMIT_MARGIN = 2

_DELIVERY_IDS = uuid.UUID("6d1c1e5e-8f0e-4a3b-9a51-0c2b7f0e1e12")
_DELIVERY_IDS_BYTES = _DELIVERY_IDS.bytes


def handler_queue(queue: str, handler: str) -> str:
    """The RabbitMQ queue of ``handler`` (a task name ``{service}.{name}``) whose service-level
    queue is ``queue``.

    >>> from celery_events.backends.amqp.topology import handler_queue
    >>> handler_queue("events.orders", "orders.welcome_order")
    'events.orders.welcome_order'
    """
    return f"{queue}.{handler.partition('.')[2] or handler}"


def retry_token(queue: str) -> str:
    """One topic word naming ``queue`` alone (queue names hold dots, which topic keys split on).

    >>> from celery_events.backends.amqp.topology import retry_token
    >>> retry_token("events.orders.welcome_order")
    'qa31e0f254fe876ac31f8cb05'
    """
    return "q" + hashlib.sha1(queue.encode()).hexdigest()[:24]


def delivery_id(message_id: str, handler: str) -> str:
    """The task id of ``handler``'s delivery of the published message ``message_id``: the
    publisher reports it, the worker gives it to the copy it takes, so both agree.

    A publish computes one per subscriber, so it is cheap: the message id (a UUID) with its
    last 48 bits XOR-ed with a hash of the handler's name, computed once per name. Distinct
    handlers of one message get distinct ids (their hashes differ), and ids of distinct
    messages differ in their first 80 random bits. A message id of another shape (a foreign
    message) is hashed with the handler instead, UUID5-style.

    >>> from celery_events.backends.amqp.topology import delivery_id
    >>> delivery_id("1b4e28ba-2fa1-41d2-883f-0016d3cca427", "orders.welcome_order")
    '1b4e28ba-2fa1-41d2-883f-c8dcbfe23028'
    """
    split = _uuid_tail(message_id)
    if split is not None:
        head, tail = split
        return f"{head}{tail ^ _handler_mask(handler):012x}"
    digest = bytearray(
        hashlib.sha1(_DELIVERY_IDS_BYTES + f"{message_id} {handler}".encode()).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def delivery_ids(message_id: str, handlers: Sequence[str]) -> list[str]:
    """:func:`delivery_id` of each of ``handlers``, the message id read once (a publish to
    100 names 100 deliveries of one message).

    >>> from celery_events.backends.amqp.topology import delivery_id, delivery_ids
    >>> message = "1b4e28ba-2fa1-41d2-883f-0016d3cca427"
    >>> delivery_ids(message, ["orders.welcome_order"]) == [
    ...     delivery_id(message, "orders.welcome_order")]
    True
    """
    split = _uuid_tail(message_id)
    if split is None:
        return [delivery_id(message_id, handler) for handler in handlers]
    head, tail = split
    return [f"{head}{tail ^ _handler_mask(handler):012x}" for handler in handlers]


def _uuid_tail(message_id: str) -> tuple[str, int] | None:
    """A UUID's first 80 bits as text and its last 48 as a number, or None for another id."""
    if len(message_id) == 36 and message_id[23] == "-":
        try:
            return message_id[:24], int(message_id[24:], 16)
        except ValueError:
            return None
    return None


@functools.lru_cache(maxsize=4096)
def _handler_mask(handler: str) -> int:
    """48 bits of a hash of ``handler``'s name (never 0, so no delivery id is its message's)."""
    digest = hashlib.sha1(_DELIVERY_IDS_BYTES + handler.encode()).digest()
    return int.from_bytes(digest[:6], "big") or 1


@dataclass(frozen=True)
class Topology:
    """The exchanges, queues and arguments of one bus on RabbitMQ (see the module docstring).

    ``queue_type`` is ``"quorum"`` or ``"classic"``; ``max_deliveries`` the bus setting.
    """

    key_prefix: str
    queue_type: str = "quorum"
    max_deliveries: int = 5

    @property
    def base(self) -> str:
        return self.key_prefix.rstrip(":.") or "celery_events"

    @property
    def exchange_name(self) -> str:
        return self.base

    @property
    def retry_exchange_name(self) -> str:
        return f"{self.base}.retry"

    @property
    def dead_exchange_name(self) -> str:
        return f"{self.base}.dead"

    def exchange(self) -> Exchange:
        return Exchange(self.exchange_name, type="topic", durable=True)

    def retry_exchange(self) -> Exchange:
        return Exchange(self.retry_exchange_name, type="topic", durable=True)

    def dead_exchange(self) -> Exchange:
        return Exchange(self.dead_exchange_name, type="direct", durable=True)

    def dead_queue_name(self, service: str) -> str:
        return f"{self.base}.dead.{service}"

    # -- arguments ------------------------------------------------------------------------

    def queue_arguments(self, service: str) -> dict[str, Any]:
        """The arguments of every handler queue of ``service``."""
        arguments: dict[str, Any] = {
            "x-queue-type": self.queue_type,
            "x-dead-letter-exchange": self.dead_exchange_name,
            "x-dead-letter-routing-key": service,
        }
        if self.queue_type == "quorum":
            arguments["x-delivery-limit"] = self.max_deliveries + DELIVERY_LIMIT_MARGIN
            # Keep a dead-lettered message until the dead-letter queue confirmed it.
            arguments["x-dead-letter-strategy"] = "at-least-once"
            arguments["x-overflow"] = "reject-publish"
        return arguments

    def dead_queue_arguments(self) -> dict[str, Any]:
        return {"x-queue-type": self.queue_type}

    # -- kombu entities -------------------------------------------------------------------

    def handler_queue(
        self, name: str, pattern: str, arguments: dict[str, Any] | None
    ) -> Queue:
        """The kombu Queue of one handler queue, with both its bindings, as declared
        everywhere (worker, publisher): the same arguments, or the broker refuses."""
        # kombu ignores ``exchange`` when a Queue has ``bindings``: both are bindings here.
        return Queue(
            name,
            bindings=[
                binding(self.retry_exchange(), routing_key=f"#.{retry_token(name)}"),
                binding(self.exchange(), routing_key=pattern),
            ],
            queue_arguments=dict(arguments or {}),
            durable=True,
            auto_delete=False,
        )

    def dead_queue(self, service: str) -> Queue:
        return Queue(
            self.dead_queue_name(service),
            exchange=self.dead_exchange(),
            routing_key=service,
            queue_arguments=self.dead_queue_arguments(),
            durable=True,
            auto_delete=False,
        )

    def retry_route(self, name: str) -> Queue:
        """The Queue a retry to handler queue ``name`` is sent to: the retry exchange with the
        queue's own token (``no_declare``: the worker declared it, with its arguments)."""
        return Queue(
            name,
            exchange=self.retry_exchange(),
            routing_key=retry_token(name),
            no_declare=True,
        )


    # -- the Topology role (backends.base.Topology) ---------------------------------------

    def queue_of(self, queue: str, handler: str, service: str) -> tuple[str, dict[str, Any]]:
        return handler_queue(queue, handler), self.queue_arguments(service)

    def retry_options(
        self, queue: str, handler: str, countdown: float
    ) -> tuple[float, dict[str, Any]]:
        """To the handler's queue through the retry exchange; on quorum queues a wait of a
        second or more goes through RabbitMQ (Celery's native delayed delivery: TTL queues that
        hand the message to ``celery_delayed_delivery``, bound to the retry exchange with the
        queue's token), so no worker holds it past the broker's ``consumer_timeout``.

        ``declare=[]``: the queue is the worker's, declared with its arguments; Celery would
        otherwise declare the default queue of a retry that names no Celery queue.
        """
        name = handler_queue(queue, handler)
        token = retry_token(name)
        route: dict[str, Any] = {"queue": self.retry_route(name), "declare": []}
        if self.queue_type == "quorum" and countdown >= 1:
            route["exchange"] = level_name(27)
            route["routing_key"] = calculate_routing_key(math.ceil(countdown), token)
            return 0, route
        route["exchange"] = self.retry_exchange_name
        route["routing_key"] = token
        return countdown, route


def arguments_json(arguments: dict[str, Any] | None) -> str:
    """A stable text of queue arguments, to compare two declarations."""
    return json.dumps(arguments or {}, sort_keys=True)
