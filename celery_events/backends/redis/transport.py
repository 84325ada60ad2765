"""kombu's Redis transport, made to survive whatever is pushed onto a queue.

Stock kombu decodes each popped item as JSON inside the worker's event loop: bytes that are not
JSON stop the worker ("Unrecoverable error: JSONDecodeError"). This transport screens every item
it pops before kombu sees it:

- on every queue, an item that is not JSON, not a kombu message, or whose kombu or Celery
  fields would stop the worker reading it (``screening.check_message``), is kept as a dead
  letter with its raw bytes (under the service whose worker popped it) instead of killing the
  worker;
- on a service's event queues, it also refuses (into dead letters) anything that is not one of
  the service's deliveries (``screening.read_delivery``): not JSON content (pickle is never
  deserialized), an unreadable or oversized body, data nested deeper than
  ``max_event_depth``, an unknown handler, or callbacks, errbacks, chains or chords. The body
  of a delivery that passes is decoded once, with plain JSON, and handed to Celery decoded.

Messages on the user's other queues that pass the first check go to Celery unchanged. The bus
installs this transport on workers of Redis-brokered apps (``broker_transport``), and its
Sentinel variant (:class:`SentinelTransport`, kombu's Sentinel channel with the same
screening) on workers of ``sentinel://`` apps.

Its :class:`QoS` also records, with each unacked message, which worker process holds it and
where it goes back, so that the messages of a worker killed outright are put back on their
queues as soon as its alive key expires (``liveness.py``), not after kombu's visibility timeout.
"""

from __future__ import annotations

import logging
import time
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps

from ... import _buses, _plainjson
from ...deadletters import Reason, new_letter
from . import screening as _screening
from .liveness import ALIVE_TTL, HeldNames, abandon_token, held_names, restore_record
from .screening import Unreadable

log = logging.getLogger(__name__)


def screen(queue: str, raw: bytes | str) -> dict[str, Any]:
    """Return the decoded kombu message, or raise :class:`Unreadable` saying why not.

    A message on one of a bus's event queues comes back as a :class:`ScreenedPayload`, which
    carries its body already decoded with plain JSON (see :class:`Message`).
    """
    bus = _buses.for_queue(queue)
    if bus is not None:
        limit = bus.settings.max_event_size
        # Refused before it is decoded at all: no delivery of max_event_size is this long.
        if len(raw) > (limit + _screening.ENVELOPE_ALLOWANCE) * 4 // 3 + _screening.MESSAGE_ALLOWANCE:
            raise Unreadable(
                Reason.UNREADABLE,
                f"{len(raw)} bytes, larger than a delivery of max_event_size ({limit} bytes of"
                " data) can be",
            )
    message = _screening.read_item(raw)
    _screening.check_message(queue, message, user_body=bus is None)
    if bus is None:
        return message
    screened = _screening.read_delivery(queue, message, bus)
    return ScreenedPayload(screened.message, screened.arguments)


class ScreenedPayload(dict[str, Any]):
    """A kombu message from an event queue, with its body decoded by the screen.

    It is the payload kombu keeps (and puts back on the queue if the worker dies), so it stays
    the message as it arrived; ``arguments`` is for :class:`Message` only.
    """

    def __init__(self, message: dict[str, Any], arguments: list[Any]) -> None:
        super().__init__(message)
        self.arguments = arguments


def quarantine(queue: str, raw: bytes | str, why: Unreadable) -> None:
    """Keep an unreadable item as a dead letter of the service consuming ``queue``."""
    bus = _buses.for_queue(queue) or _buses.any_bus()
    data = raw if isinstance(raw, bytes) else raw.encode()
    if bus is None:
        log.error(
            "celery-events: dropped an unreadable item from queue %r (%s): %r", queue, why, data
        )
        return
    envelope = why.envelope
    task_id = None
    try:
        message = _plainjson.loads(data)
        task_id = message["headers"]["id"]
    except Exception:  # the raw bytes are kept; nothing more can be read
        message = None
    letter = new_letter(
        service=bus.service,
        reason=why.reason,
        error_type=why.error_type,
        error_message=f"An item on queue {queue!r} could not be delivered: {_sentence(why)}",
        handler=why.handler,
        envelope=envelope,
        queue=queue,
        task_id=task_id if isinstance(task_id, str) else None,
        raw=data,
    )
    bus.dead_letters.add(letter)
    bus.middleware.dead_lettered(letter)
    if isinstance(task_id, str) and message is not None:
        bus.inbox.forget(task_id)


def _sentence(why: Unreadable) -> str:
    text = str(why)
    return text if text.endswith(".") else text + "."


class Message(virtual.Message):
    """kombu's message, but one from an event queue carries the body the screen decoded.

    Its body is given to Celery as already decoded (content type ``None``): the consumer and
    every pool then use ``[args, kwargs, embed]`` as they are, instead of decoding the body
    again with kombu's JSON, whose object hooks turn ``{"__type__": ..., "__value__": ...}``
    into datetimes, bytes or UUIDs. Handlers receive exactly the JSON that was published. The
    user's other queues keep kombu's decoding, which their tasks may rely on.
    """

    def __init__(self, payload: dict[str, Any], channel: Any = None, **kwargs: Any) -> None:
        super().__init__(payload, channel=channel, **kwargs)
        arguments = getattr(payload, "arguments", None)
        if arguments is not None:
            self.body = arguments
            self.content_type = None
            self.content_encoding = None
            self._decoded_cache = arguments
class QoS(kombu_redis.QoS):
    """kombu's Redis ack emulation, recording who holds each unacked message.

    With each message kombu puts in its ``unacked`` hash, in the same transaction, this writes
    the holding process's token (``holders``: tag -> token) and the message as it is to be
    restored (``held:{token}``: tag -> queues and payload, marked redelivered); acking,
    rejecting or restoring it removes both. A sweeper restores the messages of tokens whose
    alive key expired (``liveness.REAP_LUA``); the visibility timeout stays the last resort.

    A delivery's success script removes all of these itself (``inbox.py``, ``BrokerAcks``);
    its ack (:meth:`acked_with_success`) then only forgets the message here.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Where messages of an exchange and routing key go back (bindings change rarely).
        self._routes: dict[tuple[str, str], list[str]] = {}
        # Tags of messages a delivery's success record already acknowledged in Redis.
        self._acked_with_success: set[str] = set()

    def acked_with_success(self, delivery_tag: str) -> None:
        """Note that the inbox's success script already removed ``delivery_tag``'s unacked
        records (``inbox.py``, ``BrokerAcks``): its ack then sends nothing to Redis."""
        self._acked_with_success.add(delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        if delivery_tag in self._acked_with_success:
            self._acked_with_success.discard(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)
            return
        super().ack(delivery_tag)

    def _holder(self) -> tuple[str, HeldNames] | None:
        bus = _buses.any_bus()
        if bus is None:
            return None
        # The reaper's alive keys are in the broker's Redis, wherever the inbox is.
        recovery = bus.backend.recovery
        token = (
            recovery.process_token(bus.settings.key_prefix)
            if recovery is not None
            else bus.inbox.process_token()
        )
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

    def restore_unacked(self, client: Any = None) -> None:
        """Put this channel's unacked messages back on their queues (kombu's), or, when that
        fails, hand them to the reaper.

        kombu restores them when the channel closes, also after its connection was lost; a
        restore that fails then (Redis unreachable, a Sentinel failover under way) would leave
        them in ``unacked``, held by a process that is alive but no longer has them, until
        the visibility timeout (an hour by default). Giving up the process's token instead
        lets the reaper put them back :data:`~.liveness.ALIVE_TTL` seconds later.
        """
        try:
            super().restore_unacked(client)
        except Exception as exc:  # whatever stopped kombu's restore, the reaper takes over
            abandon_token()
            log.warning(
                "celery-events: could not put %d unacknowledged message(s) back on their"
                " queues (%s); they go back within %.0f s, once this process's old token"
                " expires",
                len(self._delivered),
                exc,
                ALIVE_TTL,
            )

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

    Message = Message
    QoS = QoS

    def close(self) -> None:
        # kombu reads the reply of a BRPOP in flight first, and a lost connection makes that
        # raise out of close() before the channel is closed: the consumer's second close, once
        # the transport has dropped its connection details, then fails with AttributeError, an
        # "Unrecoverable error" that stops the worker consuming. The reply is lost either way.
        if self._in_poll:
            try:
                self._brpop_read()
            except Empty:
                pass
            except self.connection_errors as exc:
                log.warning("celery-events: the broker connection was lost mid-read: %s", exc)
        super().close()

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


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel (it finds the primary through the sentinels, again after a
    failover) with the screening and holder records of :class:`Channel`."""


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Redis Sentinel transport with :class:`SentinelChannel`."""

    Channel = SentinelChannel
