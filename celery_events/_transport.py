"""kombu's Redis transport, made to survive whatever is pushed onto a queue.

Stock kombu decodes each popped item as JSON inside the worker's event loop: bytes that are not
JSON stop the worker ("Unrecoverable error: JSONDecodeError"). This transport screens every item
it pops before kombu sees it:

- on every queue, an item that is not JSON, not a kombu message, or whose kombu or Celery
  fields would stop the worker reading it (``_screening.check_message``), is kept as a dead
  letter with its raw bytes (under the service whose worker popped it) instead of killing the
  worker;
- on a service's event queues, it also refuses (into dead letters) anything that is not one of
  the service's deliveries (``_screening.read_delivery``): not JSON content (pickle is never
  deserialized), an unreadable or oversized body, data nested deeper than
  ``max_event_depth``, an unknown handler, or callbacks, errbacks, chains or chords. The body
  of a delivery that passes is decoded once, with plain JSON, and handed to Celery decoded.

Messages on the user's other queues that pass the first check go to Celery unchanged. The bus
installs this transport on workers of Redis-brokered apps (``broker_transport``).
"""

from __future__ import annotations

import logging
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str

from . import _plainjson, _screening
from ._screening import Unreadable
from .deadletters import Reason, new_letter

log = logging.getLogger(__name__)


def screen(queue: str, raw: bytes | str) -> dict[str, Any]:
    """Return the decoded kombu message, or raise :class:`Unreadable` saying why not.

    A message on one of a bus's event queues comes back as a :class:`ScreenedPayload`, which
    carries its body already decoded with plain JSON (see :class:`Message`).
    """
    from .bus import bus_for_queue

    bus = bus_for_queue(queue)
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
    from .bus import any_bus, bus_for_queue

    bus = bus_for_queue(queue) or any_bus()
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
    bus.dead_letters.add(
        new_letter(
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
    )
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


class Channel(kombu_redis.Channel):
    """A Redis channel that never hands kombu an item it cannot read."""

    Message = Message

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
