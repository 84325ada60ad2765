"""kombu's Redis transport, made to survive whatever is pushed onto a queue.

Stock kombu decodes each popped item as JSON inside the worker's event loop: bytes that are not
JSON stop the worker ("Unrecoverable error: JSONDecodeError"). This transport screens every item
it pops before kombu sees it:

- on every queue, an item that is not JSON, or not a kombu message, is kept as a dead letter
  with its raw bytes (under the service whose worker popped it) instead of killing the worker;
- on a service's event queues, it also refuses (into dead letters) messages that are not JSON
  content (pickle is never deserialized), whose body cannot be read, or that name a task none
  of the service's handlers has.

Messages on the user's other queues that pass the first check go to Celery unchanged. The bus
installs this transport on workers of Redis-brokered apps (``broker_transport``).

Its :class:`QoS` also records, with each unacked message, which worker process holds it and
where it goes back, so that the messages of a worker killed outright are put back on their
queues as soon as its alive key expires (``_liveness.py``), not after kombu's visibility timeout.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps

from ._liveness import ALIVE_TTL, HeldNames, held_names, keep_alive, restore_record
from .deadletters import Reason, new_letter

log = logging.getLogger(__name__)


class Unreadable(Exception):
    """Why a popped item is not a deliverable message."""

    def __init__(self, reason: str, message: str, handler: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.handler = handler


def screen(queue: str, raw: bytes | str) -> dict[str, Any]:
    """Return the decoded kombu message, or raise :class:`Unreadable` saying why not."""
    from .bus import bus_for_queue

    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Unreadable(Reason.UNREADABLE, f"not JSON: {exc}") from None
    if (
        not isinstance(message, dict)
        or not isinstance(message.get("properties"), dict)
        or not isinstance(message.get("headers", {}), dict)
        or "delivery_tag" not in message["properties"]
    ):
        raise Unreadable(Reason.UNREADABLE, "JSON, but not a kombu message")
    bus = bus_for_queue(queue)
    if bus is None:
        return message
    headers = message.get("headers") or {}
    content_type = message.get("content-type")
    if content_type != "application/json":
        raise Unreadable(
            Reason.UNREADABLE,
            f"content type {content_type!r} is not accepted on event queues (JSON only; it was"
            " not deserialized)",
        )
    task = headers.get("task")
    if task not in bus.handler_names:
        raise Unreadable(Reason.UNKNOWN_HANDLER, f"no handler of service {bus.service!r} is"
                         f" named {task!r}")
    try:
        body = message.get("body") or ""
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body, validate=True).decode()
        args, kwargs, embed = json.loads(body)
        if not isinstance(args, list) or not isinstance(kwargs, dict) or len(args) != 1:
            raise ValueError("the body is not [[envelope], {}, {...}]")
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise Unreadable(Reason.UNREADABLE, f"unreadable body: {exc}", handler=task) from None
    return message


def quarantine(queue: str, raw: bytes | str, why: Unreadable) -> None:
    """Keep an unreadable item as a dead letter of the service consuming ``queue``."""
    from .bus import any_bus, bus_for_queue

    bus = bus_for_queue(queue) or any_bus()
    data = raw if isinstance(raw, bytes) else raw.encode()
    if bus is None:
        log.error(
            "celery-events: dropped an unreadable item from queue %r (%s): %r", queue, why, data
        )
        return
    envelope = None
    task_id = None
    try:
        message = json.loads(data)
        task_id = message["headers"]["id"]
    except Exception:  # the raw bytes are kept; nothing more can be read
        message = None
    bus.dead_letters.add(
        new_letter(
            service=bus.service,
            reason=why.reason,
            error_type="UnreadableMessage",
            error_message=f"An item on queue {queue!r} could not be delivered: {why}.",
            handler=why.handler,
            envelope=envelope,
            queue=queue,
            task_id=task_id if isinstance(task_id, str) else None,
            raw=data,
        )
    )
    if isinstance(task_id, str) and message is not None:
        bus.inbox.forget(task_id)


class QoS(kombu_redis.QoS):
    """kombu's Redis ack emulation, recording who holds each unacked message.

    With each message kombu puts in its ``unacked`` hash, in the same transaction, this writes
    the holding process's token (``holders``: tag -> token) and the message as it is to be
    restored (``held:{token}``: tag -> queues and payload, marked redelivered); acking,
    rejecting or restoring it removes both. A sweeper restores the messages of tokens whose
    alive key expired (``_liveness.REAP_LUA``); the visibility timeout stays the last resort.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Where messages of an exchange and routing key go back (bindings change rarely).
        self._routes: dict[tuple[str, str], list[str]] = {}

    def _holder(self) -> tuple[str, HeldNames] | None:
        from .bus import any_bus

        bus = any_bus()
        if bus is None:
            return None
        token = keep_alive(bus.inbox.client, bus.settings.key_prefix)
        # kombu's client adds the global key prefix to the keys it writes.
        return token, held_names(bus.settings.key_prefix)

    def _queues_for(self, exchange: str, routing_key: str) -> list[str]:
        route = (exchange, routing_key)
        queues = self._routes.get(route)
        if queues is None:
            queues = self.channel._lookup(exchange, routing_key) if exchange else [routing_key]
            self._routes[route] = queues
        return queues

    # Same as kombu 5.7's, plus the holder records, in the same transaction.
    def append(self, message: Any, delivery_tag: str) -> None:
        holder = self._holder()
        if holder is None:
            super().append(message, delivery_tag)
            return
        token, names = holder
        channel = self.channel
        delivery = message.delivery_info
        exchange, routing_key = delivery["exchange"], delivery["routing_key"]
        raw = message._raw
        priority = channel._get_message_priority(raw, reverse=False)
        record = restore_record(
            [
                channel.global_keyprefix + channel._q_for_pri(queue, priority)
                for queue in self._queues_for(exchange, routing_key)
            ],
            dumps(_redelivered(raw)),
        )
        held = names.held_prefix + token
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag, dumps([raw, exchange, routing_key]))
            pipe.hset(names.holders, delivery_tag, token)
            pipe.hset(held, delivery_tag, record)
            # A record left behind (kombu restored the message from another worker) goes too.
            pipe.pexpire(held, int(max(self.visibility_timeout, ALIVE_TTL) * 2000))
            pipe.execute()
            virtual.QoS.append(self, message, delivery_tag)

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        pipe = super()._remove_from_indices(delivery_tag, pipe)
        holder = self._holder()
        if holder is not None:
            token, names = holder
            pipe.hdel(names.holders, delivery_tag).hdel(names.held_prefix + token, delivery_tag)
        return pipe


def _redelivered(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of a kombu message marked redelivered, as kombu's restore marks it."""
    message = dict(raw)
    if isinstance(raw.get("headers"), dict):
        message["headers"] = {**raw["headers"], "redelivered": True}
    properties = raw.get("properties")
    if isinstance(properties, dict) and isinstance(properties.get("delivery_info"), dict):
        message["properties"] = {
            **properties,
            "delivery_info": {**properties["delivery_info"], "redelivered": True},
        }
    return message


class Channel(kombu_redis.Channel):
    """A Redis channel that never hands kombu an item it cannot read."""

    QoS = QoS

    def _receive_item(self, queue: str, item: bytes) -> dict[str, Any] | None:
        try:
            return screen(queue, item)
        except Unreadable as why:
            quarantine(queue, item, why)
            return None

    # Same as kombu 5.7's, but the item is screened before it is decoded and delivered.
    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                dest__item = self.client.parse_response(
                    self.client.connection, "BRPOP", **options
                )
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if dest__item:
                dest, item = dest__item
                dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
                self._queue_cycle.rotate(dest)
                message = self._receive_item(dest, item)
                if message is not None:
                    self.connection._deliver(message, dest)
                return True
            raise Empty()
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()

    # Same as kombu 5.7's, with the screening above.
    def _get(self, queue: str) -> dict[str, Any]:  # type: ignore[override]
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, pri))
                if item:
                    self._maybe_update_queues_expire(client, queue)
                    message = self._receive_item(queue, item)
                    if message is not None:
                        return message
            self._maybe_update_queues_expire(client, queue)
            raise Empty()


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel
