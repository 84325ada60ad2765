"""What an item popped from a Redis queue may contain before kombu and Celery see it.

kombu's Redis channel and Celery's consumer read a message's properties and task headers in the
worker's main process, before any task code runs, and trust their types: a ``headers.id`` that
is a dict, a ``timelimit`` that is a string or a missing ``delivery_info`` stops the worker or
wedges its consumer, and since the item is restored the restarted worker meets it again. The
screening transport (``transport.py``) passes every popped item through here first:

- :func:`check_message`, on every queue: the fields that kombu and Celery read before the task
  runs have the types Celery itself sends, so nothing there can crash or wedge a worker. The
  task's own arguments on the user's queues are the user's business.
- :func:`read_delivery`, on a bus's event queues: a whitelist of what a protocol-2 delivery of
  the bus contains (every message the bus, Celery's ``Task.retry`` of a delivery, or a
  dead-letter replay sends passes it). The body is decoded here, with plain JSON, once; only
  the subscribed handler may run from it: no ``callbacks``, ``errbacks``, ``chain`` or
  ``chord``, no ``kwargs``, no expiry, data no deeper than ``max_event_depth`` and no larger
  than ``max_event_size``, and a valid envelope.

Anything else raises :class:`Unreadable`, and the item becomes a dead letter with its raw bytes.
"""

from __future__ import annotations

import base64
import binascii
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from celery.app.task import Context

from ... import _plainjson
from ...deadletters import Reason
from ...envelope import Event
from ...errors import InvalidEnvelope
from ..base import ServiceBus

__all__ = ["Unreadable", "Screened", "read_item", "check_message", "read_delivery"]

#: Room in a delivery's body beyond its data: the envelope's other attributes and the
#: ``[[...], {}, {...}]`` around it.
ENVELOPE_ALLOWANCE = 16 * 1024
#: Room in a whole queue item beyond its body: headers (``argsrepr`` among them), properties.
MESSAGE_ALLOWANCE = 64 * 1024
#: Task ids and delivery tags name Redis keys and hash fields; Celery makes 36-character UUIDs.
MAX_ID_LENGTH = 255
#: Headers and properties nest a few levels (``stamps``, ``delivery_info``); deeper is not ours.
MAX_HEADER_DEPTH = 16

# The parts of a task request that make the worker run more than the task itself.
_STEERING = ("callbacks", "errbacks", "chain", "chord", "link", "link_error")


class Unreadable(Exception):
    """Why a popped item is not a deliverable message."""

    def __init__(
        self,
        reason: str,
        message: str,
        handler: str | None = None,
        *,
        error_type: str = "UnreadableMessage",
        envelope: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.handler = handler
        self.error_type = error_type
        #: The envelope, when it could be read but is not valid.
        self.envelope = envelope


@dataclass(frozen=True)
class Screened:
    """A delivery that passed :func:`read_delivery`: its message and its decoded body."""

    message: dict[str, Any]
    #: ``[args, kwargs, embed]``, decoded with plain JSON.
    arguments: list[Any]


def _unreadable(message: str, handler: str | None = None) -> Unreadable:
    return Unreadable(Reason.UNREADABLE, message, handler=handler)


# -- every queue ----------------------------------------------------------------------------


def read_item(raw: bytes | str) -> dict[str, Any]:
    """Decode a popped item as a kombu message (plain JSON, bounded nesting)."""
    try:
        message = _plainjson.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _unreadable(f"not JSON: {exc}") from None
    if (
        not isinstance(message, dict)
        or not isinstance(message.get("properties"), dict)
        or not isinstance(message.get("headers") or {}, dict)
    ):
        raise _unreadable("JSON, but not a kombu message")
    return message


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_optional_str(value: object) -> bool:
    return value is None or isinstance(value, str)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_optional_int(value: object) -> bool:
    return value is None or _is_int(value)


def _is_optional_bool(value: object) -> bool:
    return value is None or isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _is_timelimit(value: object) -> bool:
    # Celery unpacks it into (hard, soft) pool timeouts.
    return value is None or (
        isinstance(value, list)
        and len(value) == 2
        and all(limit is None or _is_number(limit) for limit in value)
    )


def _is_str_list(value: object) -> bool:
    return value is None or (isinstance(value, list) and all(_is_str(v) for v in value))


def _is_optional_dict(value: object) -> bool:
    return value is None or isinstance(value, dict)


def _is_time(value: object) -> bool:
    return value is None or (isinstance(value, str) and _parse_time(value) is not None)


def _parse_time(text: str) -> datetime | None:
    """``text`` as Celery reads an ``eta``/``expires`` header, or None if it cannot."""
    from celery.utils.time import maybe_iso8601

    try:
        parsed: datetime | None = maybe_iso8601(text)
        if parsed is None:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        parsed.timestamp()  # Celery's timer needs one
    except (ValueError, TypeError, OverflowError, AttributeError):
        return None
    return parsed


#: Every task header of Celery's protocol 2, with the types Celery itself sends.
HEADER_TYPES = {
    "lang": _is_optional_str,
    "task": _is_str,
    "id": _is_str,
    "shadow": _is_optional_str,
    "eta": _is_time,
    "expires": _is_time,
    "group": _is_optional_str,
    "group_index": _is_optional_int,
    "retries": _is_optional_int,
    "timelimit": _is_timelimit,
    "root_id": _is_optional_str,
    "parent_id": _is_optional_str,
    "argsrepr": _is_optional_str,
    "kwargsrepr": _is_optional_str,
    "origin": _is_optional_str,
    "ignore_result": _is_optional_bool,
    "replaced_task_nesting": _is_optional_int,
    "stamped_headers": _is_str_list,
    "stamps": _is_optional_dict,
    "compression": _is_optional_str,
}


def check_message(queue: str, message: dict[str, Any], *, user_body: bool = True) -> None:
    """Refuse a message whose kombu or Celery fields would stop the worker reading it.

    ``user_body`` also checks that a JSON body decodes, with kombu's JSON as Celery will, into
    ``[args, kwargs, options]``; event queues read their bodies with :func:`read_delivery`.
    """
    properties = message["properties"]
    tag = properties.get("delivery_tag")
    if not isinstance(tag, str) or not tag or len(tag) > MAX_ID_LENGTH:
        raise _unreadable(f"properties.delivery_tag is {_shown(tag)}, not a delivery tag")
    info = properties.get("delivery_info")
    # kombu's Redis QoS reads both to put the message back if the worker dies.
    if (
        not isinstance(info, dict)
        or not isinstance(info.get("exchange"), str)
        or not isinstance(info.get("routing_key"), str)
    ):
        raise _unreadable(
            f"properties.delivery_info is {_shown(info)}, not an object naming the exchange"
            " and routing key"
        )
    encoding = properties.get("body_encoding")
    if encoding is not None and encoding != "base64":
        raise _unreadable(f"properties.body_encoding is {_shown(encoding)}, not 'base64'")
    body = message.get("body")
    if body is not None and not isinstance(body, str):
        raise _unreadable(f"the body is {_shown(body)}, not a string")
    for key in ("content-type", "content-encoding"):
        if not _is_optional_str(message.get(key)):
            raise _unreadable(f"{key} is {_shown(message.get(key))}, not a string")
    headers = message.get("headers") or {}
    if "task" not in headers:
        return  # protocol 1: Celery decodes the body itself, and refuses what it cannot read
    for key, valid in HEADER_TYPES.items():
        if key in headers and not valid(headers[key]):
            raise _unreadable(f"task header {key!r} is {_shown(headers[key])}", _task_of(headers))
    if "id" not in headers:
        raise _unreadable("the task headers have no 'id'", _task_of(headers))
    if user_body and message.get("content-type") == "application/json":
        _check_json_body(message, _task_of(headers))


def _check_json_body(message: dict[str, Any], task: str | None) -> None:
    # Celery's consumer unpacks the decoded body into (args, kwargs, embed) in the worker's
    # main process; kombu's JSON (the user's queues keep its object hooks) decodes it there.
    from kombu.utils.json import loads as kombu_loads

    body = message.get("body") or ""
    try:
        text: str | bytes = body
        if message["properties"].get("body_encoding") == "base64":
            text = base64.b64decode(body, validate=True)
        decoded = kombu_loads(text)  # type: ignore[no-untyped-call]
    except Exception as exc:  # whatever kombu's decoder raises would stop the worker
        raise _unreadable(f"unreadable body: {exc}", task) from None
    if not (
        isinstance(decoded, (list, tuple))
        and len(decoded) == 3
        and isinstance(decoded[0], (list, tuple))
        and isinstance(decoded[1], dict)
        and (decoded[2] is None or isinstance(decoded[2], dict))
    ):
        raise _unreadable("the body is not [args, kwargs, options]", task)


def _task_of(headers: dict[str, Any]) -> str | None:
    task = headers.get("task")
    return task if isinstance(task, str) else None


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- a bus's event queues -------------------------------------------------------------------


def read_delivery(queue: str, message: dict[str, Any], bus: ServiceBus) -> Screened:
    """Refuse anything on ``bus``'s event queue ``queue`` that is not one of its deliveries."""
    headers: dict[str, Any] = message.get("headers") or {}
    content_type = message.get("content-type")
    if content_type != "application/json":
        raise _unreadable(
            f"content type {content_type!r} is not accepted on event queues (JSON only; it was"
            " not deserialized)"
        )
    task = headers.get("task")
    if task not in bus.handler_names:
        raise Unreadable(
            Reason.UNKNOWN_HANDLER, f"no handler of service {bus.service!r} is named {task!r}"
        )
    _check_headers(queue, message, headers, bus, task)
    arguments = _read_body(message, bus, task)
    return Screened(message=message, arguments=arguments)


def _check_headers(
    queue: str, message: dict[str, Any], headers: dict[str, Any], bus: ServiceBus, task: str
) -> None:
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_ID_LENGTH:
        raise _unreadable(f"task header 'id' is {_shown(task_id)}, not a task id", task)
    if message.get("content-encoding") not in (None, "utf-8"):
        raise _unreadable(
            f"content-encoding is {_shown(message.get('content-encoding'))}, not 'utf-8'", task
        )
    if headers.get("compression") is not None:
        raise _unreadable("deliveries are never compressed", task)
    if headers.get("expires") is not None:
        # Celery acks an expired message without running it: a delivery would vanish.
        raise _unreadable("deliveries never expire; task header 'expires' is set", task)
    eta = headers.get("eta")
    if eta is not None:
        when = _parse_time(eta)
        longest = needed_visibility_timeout(bus)
        # A retry waits at most retry_backoff_max; a later one would outlive the visibility
        # timeout, and be handed to a second worker meanwhile.
        if when is None or when.timestamp() > time.time() + longest:
            raise _unreadable(
                f"task header 'eta' is {_shown(eta)}, more than {longest:.0f} s ahead", task
            )
    for key, value in headers.items():
        if key in HEADER_TYPES:
            continue
        if key in _STEERING:
            if value:
                raise _unreadable(
                    f"task header {key!r} is set; nothing but the handler runs from an event"
                    " queue",
                    task,
                )
            continue
        # Every header becomes an attribute of the task's request: none may replace one of
        # Celery's own (``get``, ``update``, ``delivery_info``, ...). Other headers, such as a
        # tracing library's, pass.
        if not isinstance(key, str) or key.startswith("_") or hasattr(Context, key):
            raise _unreadable(f"task header {key!r} is not one a delivery may carry", task)
    if _nests_deeper(headers) or _nests_deeper(message["properties"]):
        raise _unreadable(f"the headers nest deeper than {MAX_HEADER_DEPTH} levels", task)
    routing_key = message["properties"]["delivery_info"]["routing_key"]
    if routing_key != queue:
        # kombu puts a message back where its delivery_info says, were the worker to die.
        raise _unreadable(
            f"properties.delivery_info routes it to {_shown(routing_key)}, not to {queue!r}", task
        )


def _nests_deeper(fields: dict[str, Any]) -> bool:
    # Most values are scalars; only containers need the walk.
    return any(
        isinstance(value, (dict, list)) and _plainjson.depth_exceeds(value, MAX_HEADER_DEPTH - 1)
        for value in fields.values()
    )


def _read_body(message: dict[str, Any], bus: ServiceBus, task: str) -> list[Any]:
    settings = bus.settings
    body = message.get("body") or ""
    # A cheap bound first: base64 makes the body 4/3 as long as the JSON it holds.
    if len(body) > (settings.max_event_size + ENVELOPE_ALLOWANCE) * 4 // 3 + 4:
        raise _unreadable(
            f"the body is {len(body)} characters, larger than a delivery of max_event_size"
            f" ({settings.max_event_size} bytes of data) can be",
            task,
        )
    try:
        text: str | bytes = body
        if message["properties"].get("body_encoding") == "base64":
            text = base64.b64decode(body, validate=True)
        if len(text) > settings.max_event_size + ENVELOPE_ALLOWANCE:
            raise ValueError(
                f"{len(text)} bytes, larger than a delivery of max_event_size"
                f" ({settings.max_event_size} bytes of data) can be"
            )
        arguments = _plainjson.loads(text)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise _unreadable(f"unreadable body: {exc}", task) from None
    if (
        not isinstance(arguments, list)
        or len(arguments) != 3
        or not isinstance(arguments[0], list)
        or len(arguments[0]) != 1
    ):
        raise _unreadable("the body is not [[envelope], {}, {...}]", task)
    args, kwargs, embed = arguments
    if kwargs != {}:
        raise _unreadable(f"a delivery takes no keyword arguments; it has {_shown(kwargs)}", task)
    if embed is None:
        embed = arguments[2] = {}
    if not isinstance(embed, dict):
        raise _unreadable(f"the body's options are {_shown(embed)}, not an object", task)
    for key, value in embed.items():
        if key not in _STEERING[:4]:
            raise _unreadable(f"the body's options hold {key!r}, which deliveries never do", task)
        if value:
            raise _unreadable(
                f"the body's {key!r} is set; nothing but the handler runs from an event queue",
                task,
            )
    # Refused here, before a prefork pool pickles it (which recursion too deep would kill).
    if _plainjson.depth_exceeds(args, settings.max_event_depth + 2):
        raise _unreadable(
            f"the event data nests deeper than max_event_depth ({settings.max_event_depth})",
            task,
        )
    envelope = args[0]
    try:
        Event.from_envelope(envelope)
    except InvalidEnvelope as exc:
        # Kept with its raw bytes, like every other item the screen refuses.
        raise Unreadable(
            Reason.INVALID_ENVELOPE,
            str(exc),
            task,
            error_type="InvalidEnvelope",
            envelope=envelope if isinstance(envelope, dict) else None,
        ) from None
    return arguments


#: Extra room on top of the longest retry wait plus handler time limit.
VISIBILITY_MARGIN = 10.0


def needed_visibility_timeout(bus: ServiceBus) -> float:
    """The shortest Redis visibility timeout under which no delivery runs twice."""
    return bus.longest_delivery_wait + VISIBILITY_MARGIN
