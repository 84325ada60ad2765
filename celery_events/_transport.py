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
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str

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


class Channel(kombu_redis.Channel):
    """A Redis channel that never hands kombu an item it cannot read."""

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
