"""Celery task messages for deliveries, built the way ``app.send_task`` builds them.

A publish builds what every delivery of one event shares once (the body, the argument repr,
the origin) and then, per delivery, only what differs: task name, task id, shown name and
queue. The Redis payload is assembled from pre-encoded JSON pieces; it is byte for byte the
``json.dumps`` of the message kombu's Redis transport would store for ``app.send_task``, so
workers and Flower cannot tell the difference (the tests compare both, field by field).

When a ``before_task_publish`` receiver is connected, or the message goes through kombu, the
headers and properties become real dicts that receivers may change; the payload is then
encoded from those dicts, with whatever the receivers added.
"""

from __future__ import annotations

import base64
import json
import os
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.utils.nodenames import anon_nodename
from celery.utils.saferepr import saferepr
from celery.utils.time import utcoffset
from kombu.entity import DELIVERY_MODES

from .trust.fields import SENSITIVE, mask_envelope

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_EMBED_JSON = json.dumps(_EMBED)
_dumps = json.dumps

#: ``(task_name, queue, shown_name, subscribing service)`` of one delivery.
Target = tuple[str, str, str, str]


def encode_body(envelope_head: dict[str, Any], data_json: str) -> str:
    """Return ``json.dumps([[envelope], {}, embed])`` without encoding the data twice.

    ``envelope_head`` is the envelope without ``data``; the already validated JSON of the data
    is spliced in as the last key, which is where ``json.dumps`` would have put it.
    """
    head = json.dumps(envelope_head)
    return f'[[{head[:-1]}, "data": {data_json}}}], {{}}, {_EMBED_JSON}]'


# -- argsrepr -----------------------------------------------------------------------------


class _NotPlain(Exception):
    """A value that is not plain JSON; Celery's own saferepr handles it."""


def _plain_repr(value: object, level: int, maxlevels: int) -> str:
    if type(value) is str:
        return "'" + value.replace("'", "\\'") + "'"
    if type(value) is int or type(value) is float or type(value) is bool:
        return str(value)
    if value is None:
        return "None"
    if type(value) is list:
        if maxlevels and level >= maxlevels:
            return "[...]"
        return "[" + ", ".join([_plain_repr(v, level + 1, maxlevels) for v in value]) + "]"
    if type(value) is dict:
        if maxlevels and level >= maxlevels:
            return "{...}"
        pairs = []
        for key, item in value.items():
            if type(key) is not str:
                raise _NotPlain
            pairs.append(
                "'" + key.replace("'", "\\'") + "': " + _plain_repr(item, level + 1, maxlevels)
            )
        return "{" + ", ".join(pairs) + "}"
    raise _NotPlain


def fast_saferepr(value: object, maxlen: int | None, maxlevels: int) -> str:
    """Return exactly ``celery.utils.saferepr.saferepr(value, maxlen, maxlevels)``, quickly.

    Celery's saferepr streams tokens through generators, which costs tens of microseconds for
    an envelope. For plain JSON values (exact ``dict``, ``list``, ``str``, ``int``, ``float``,
    ``bool``, ``None``) its output is this simple recursion's, as long as nothing is cut:
    saferepr cuts only once its running length reaches ``maxlen``, so any text shorter than
    ``maxlen`` is what it returns. Everything else goes to Celery's own function.

    >>> from celery_events._messages import fast_saferepr
    >>> fast_saferepr([{"a": "it's", "b": [1, 2.5, None, True]}], 1024, 3)
    "[{'a': 'it\\\\'s', 'b': [1, 2.5, None, True]}]"
    """
    try:
        text = _plain_repr(value, 0, maxlevels)
    except _NotPlain:
        return str(saferepr(value, maxlen, maxlevels=maxlevels))
    if maxlen is not None and len(text) >= maxlen:
        return str(saferepr(value, maxlen, maxlevels=maxlevels))
    return text


# -- messages -----------------------------------------------------------------------------


_UUID4_MASK = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_BITS = (0x4000 << 64) | (0x8000 << 48)


def new_ids(count: int) -> list[str]:
    """``count`` random UUID4 strings, like Celery's ``uuid()``, from one read of urandom.

    ``str(uuid.uuid4())`` costs about 2 µs, a fifth of a delivery's whole encoding.

    >>> from celery_events._messages import new_ids
    >>> import uuid; [uuid.UUID(i).version for i in new_ids(2)]
    [4, 4]
    """
    raw = os.urandom(16 * count)
    ids = []
    for start in range(0, 16 * count, 16):
        number = int.from_bytes(raw[start : start + 16], "big") & _UUID4_MASK | _UUID4_BITS
        h = f"{number:032x}"
        ids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return ids


def new_id() -> str:
    """One random UUID4 string."""
    return new_ids(1)[0]


@dataclass
class EventParts:
    """What every delivery of one event shares."""

    envelope: dict[str, Any]
    body_b64: str
    argsrepr: str
    kwargsrepr: str
    origin: str
    reply_to: str
    parent_id: str | None
    root_id: str | None
    delivery_mode: int
    #: The payload text between a delivery's ``root_id`` and its correlation id.
    middle_json: str
    #: The payload text between ``reply_to`` and the routing key.
    tail_json: str


class TaskMessage:
    """One delivery's message, before the transport wraps it."""

    __slots__ = (
        "task_name", "queue", "shadow", "service", "task_id", "delivery_tag", "parts",
        "subscription", "direct", "_headers", "_properties",
    )

    def __init__(
        self,
        task_name: str,
        queue: str,
        shadow: str,
        service: str,
        task_id: str,
        delivery_tag: str,
        parts: EventParts,
    ) -> None:
        self.task_name = task_name
        self.queue = queue
        self.shadow = shadow
        #: The subscribing service, for the delivery ledger.
        self.service = service
        self.task_id = task_id
        #: The tag kombu's virtual transports give each published message.
        self.delivery_tag = delivery_tag
        self.parts = parts
        #: The subscription this delivery is for (a ``registry.Subscription``), set by the
        #: publish path: a transport that declares queues reads its queue arguments.
        self.subscription: Any = None
        #: Sent to this one handler's queue (a replay), not to every subscriber of the event:
        #: a transport that routes by event name must not route it so.
        self.direct = False
        self._headers: dict[str, Any] | None = None
        self._properties: dict[str, Any] | None = None

    @property
    def event_id(self) -> str:
        return str(self.parts.envelope["id"])

    @property
    def root_id(self) -> str:
        return self.parts.root_id or self.task_id

    @property
    def body(self) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        """``(args, kwargs, embed)``, as Celery's protocol 2 has it (what signals see)."""
        return ([self.parts.envelope], {}, dict(_EMBED))

    @property
    def headers(self) -> dict[str, Any]:
        """The task headers as ``as_task_v2`` makes them; made on first use, then kept."""
        if self._headers is None:
            parts = self.parts
            self._headers = {
                "lang": "py",
                "task": self.task_name,
                "id": self.task_id,
                "shadow": self.shadow,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": self.root_id,
                "parent_id": parts.parent_id,
                "argsrepr": parts.argsrepr,
                "kwargsrepr": parts.kwargsrepr,
                "origin": parts.origin,
                "ignore_result": None,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
            }
        return self._headers

    @property
    def properties(self) -> dict[str, Any]:
        """The message properties as ``as_task_v2`` makes them; made on first use, then kept."""
        if self._properties is None:
            self._properties = {"correlation_id": self.task_id, "reply_to": self.parts.reply_to}
        return self._properties

    def sent_event(self) -> dict[str, Any]:
        """The fields of the ``task-sent`` event, as ``as_task_v2`` makes them, but for the name.

        Celery names the event after the task; here it carries the delivery's shown name
        (``user.registered → orders.welcome_order``), the name the worker's own events give it,
        so that Flower lists a waiting delivery under its event, and a task-sent event that
        reaches Flower late cannot rename it. Like Celery's, the fields are fixed when the
        message is built, before any signal runs.
        """
        parts = self.parts
        return {
            "uuid": self.task_id,
            "root_id": self.root_id,
            "parent_id": parts.parent_id,
            "name": self.shadow,
            "args": parts.argsrepr,
            "kwargs": parts.kwargsrepr,
            "retries": 0,
            "eta": None,
            "expires": None,
        }


class MessageBuilder:
    """Builds the task messages of one Celery app the way its ``send_task`` would."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        conf = app.conf
        self._maxlevels: int = conf.task_repr_maxlevels
        self._argsrepr_maxsize: int = app.amqp.argsrepr_maxsize
        self._kwargsrepr = str(
            saferepr({}, app.amqp.kwargsrepr_maxsize, maxlevels=self._maxlevels)
        )
        mode = conf.task_default_delivery_mode
        self._delivery_mode: int = DELIVERY_MODES.get(mode) or mode or 2
        self._origin_pid = 0
        self._origin = ""

    def _current_origin(self) -> str:
        # Celery names the sending process in every message; a forked child is another one.
        pid = os.getpid()
        if pid != self._origin_pid:
            self._origin = anon_nodename()
            self._origin_pid = pid
        return self._origin

    def build(
        self,
        envelope: dict[str, Any],
        body_json: str,
        targets: Sequence[Target],
        *,
        parent_id: str | None,
        root_id: str | None,
        placeholder_ids: bool = False,
    ) -> list[TaskMessage]:
        """Build one message per ``(task_name, queue, shown_name, service)`` target."""
        if not targets:
            return []
        # Once per event: what worker logs, task events and Flower show of every delivery,
        # with the publisher's sensitive fields masked.
        shown = mask_envelope(envelope) if SENSITIVE in envelope else envelope
        argsrepr = fast_saferepr([shown], self._argsrepr_maxsize, self._maxlevels)
        origin = self._current_origin()
        reply_to = self.app.thread_oid
        middle = (
            f', "parent_id": {_dumps(parent_id)}, "argsrepr": {_dumps(argsrepr)},'
            f' "kwargsrepr": {_dumps(self._kwargsrepr)}, "origin": {_dumps(origin)},'
            ' "ignore_result": null, "replaced_task_nesting": 0, "stamped_headers": null,'
            ' "stamps": {}}, "properties": {"correlation_id": "'
        )
        tail = (
            f'", "reply_to": {_dumps(reply_to)}, "delivery_mode": {self._delivery_mode},'
            ' "delivery_info": {"exchange": "", "routing_key": '
        )
        parts = EventParts(
            envelope=envelope,
            body_b64=base64.b64encode(body_json.encode()).decode(),
            argsrepr=argsrepr,
            kwargsrepr=self._kwargsrepr,
            origin=origin,
            reply_to=reply_to,
            parent_id=parent_id,
            root_id=root_id,
            delivery_mode=self._delivery_mode,
            middle_json=middle,
            tail_json=tail,
        )
        count = len(targets)
        ids = [""] * (2 * count) if placeholder_ids else new_ids(2 * count)
        return [
            TaskMessage(task, queue, shadow, service, ids[i], ids[count + i], parts)
            for i, (task, queue, shadow, service) in enumerate(targets)
        ]


_BUILDERS: weakref.WeakKeyDictionary[Celery, MessageBuilder] = weakref.WeakKeyDictionary()


def build_messages(
    app: Celery,
    envelope: dict[str, Any],
    body_json: str,
    targets: Sequence[Target],
    *,
    parent_id: str | None,
    root_id: str | None,
    placeholder_ids: bool = False,
) -> list[TaskMessage]:
    """Build one message per ``(task_name, queue, shown_name, service)`` target, as
    ``send_task`` would; with ``placeholder_ids``, task ids and delivery tags are empty, for
    a transport that assigns them (``Transport.assigns_task_ids``)."""
    builder = _BUILDERS.get(app)
    if builder is None:
        builder = _BUILDERS[app] = MessageBuilder(app)
    return builder.build(
        envelope,
        body_json,
        targets,
        parent_id=parent_id,
        root_id=root_id,
        placeholder_ids=placeholder_ids,
    )


# -- what the Redis transport stores ------------------------------------------------------


#: The fixed pieces of a queue payload between its per-delivery values (see
#: :func:`redis_payload`); the Redis fan-out's script assembles payloads from the same pieces.
PAYLOAD_OPEN = '{"body": "'
PAYLOAD_HEADERS = (
    '", "content-encoding": "utf-8", "content-type": "application/json",'
    ' "headers": {"lang": "py", "task": '
)
PAYLOAD_ID = ', "id": "'
PAYLOAD_SHADOW = '", "shadow": '
PAYLOAD_ROOT = (
    ', "eta": null, "expires": null, "group": null, "group_index": null, "retries": 0,'
    ' "timelimit": [null, null], "root_id": "'
)
PAYLOAD_TAG = '}, "priority": 0, "body_encoding": "base64", "delivery_tag": "'
PAYLOAD_CLOSE = '"}}'


def payload_shared(parts: EventParts) -> tuple[str, str, str]:
    """The three pieces of a queue payload every delivery of one event shares: up to the task
    name (with the body), from the root id to the correlation id, and from there to the
    routing key (see :func:`redis_payload`)."""
    return (
        PAYLOAD_OPEN + parts.body_b64 + PAYLOAD_HEADERS,
        '"' + parts.middle_json,
        parts.tail_json,
    )


def redis_payload(message: TaskMessage) -> str:
    """Wrap ``message`` exactly as kombu's Redis transport stores it in a queue list."""
    if message._headers is not None or message._properties is not None:
        return _redis_payload_from_dicts(message)
    parts = message.parts
    task_id = message.task_id
    opening, middle, tail = payload_shared(parts)
    return "".join(
        (
            opening,
            _dumps(message.task_name),
            PAYLOAD_ID,
            task_id,
            PAYLOAD_SHADOW,
            _dumps(message.shadow),
            PAYLOAD_ROOT,
            parts.root_id or task_id,
            middle,
            task_id,
            tail,
            _dumps(message.queue),
            PAYLOAD_TAG,
            message.delivery_tag,
            PAYLOAD_CLOSE,
        )
    )


def redis_templated(message: TaskMessage) -> bool:
    """Whether the Redis fan-out's script can assemble ``message``'s payload from its event's
    shared pieces, its ids and its plain names (quoted as they are: ``json.dumps`` would
    escape nothing in them); if not, it is sent whole (:func:`redis_payload`)."""
    return (
        message._headers is None
        and message._properties is None
        and _is_plain(message.queue)
        and _is_plain(message.task_name)
    )


def _is_plain(name: str) -> bool:
    return name.isascii() and name.isprintable() and '"' not in name and "\\" not in name


def _redis_payload_from_dicts(message: TaskMessage) -> str:
    # Like kombu: the message's own properties first, then what the transport adds.
    properties = dict(message.properties)
    properties.setdefault("delivery_mode", message.parts.delivery_mode)
    properties["delivery_info"] = {"exchange": "", "routing_key": message.queue}
    properties.setdefault("priority", 0)
    properties["body_encoding"] = "base64"
    properties["delivery_tag"] = message.delivery_tag
    return _dumps(
        {
            "body": message.parts.body_b64,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": message.headers,
            "properties": properties,
        }
    )


class SentEvents:
    """Builds the ``task-sent`` event messages Celery publishes for Flower, per app.

    They are what ``EventDispatcher.publish`` sends through a producer on the ``celeryev``
    fanout exchange, which kombu's Redis transport turns into a ``PUBLISH`` on the channel
    ``{global_keyprefix}{fanout_prefix}celeryev/task.sent`` (``task.multi`` for a group of
    them in one message, as the Redis fan-out sends those of one event).
    """

    def __init__(self, app: Celery, db: int) -> None:
        self.app = app
        options = app.conf.broker_transport_options or {}
        # The dispatcher send_task itself uses: same hostname, pid, exchange and clock.
        self._dispatcher = app.amqp._event_dispatcher
        exchange = self._dispatcher.exchange.name
        fanout_prefix = options.get("fanout_prefix", True)
        if isinstance(fanout_prefix, str):
            prefix = fanout_prefix
        elif fanout_prefix:
            prefix = "/{db}."
        else:
            prefix = ""
        prefix = options.get("global_keyprefix", "") + prefix.format(db=db)
        if options.get("fanout_patterns", True):
            self.channel = f"{prefix}{exchange}/task.sent"
            self._multi_channel = f"{prefix}{exchange}/task.multi"
        else:
            self.channel = self._multi_channel = f"{prefix}{exchange}"
        self._exchange = exchange
        self._pieces: tuple[tuple[Any, ...], tuple[str, str, str]] | None = None

    @property
    def enabled(self) -> bool:
        """Whether Celery would send ``task-sent`` events (``task_send_sent_event``)."""
        return bool(self.app.conf.task_send_sent_event)

    # The task-sent events of one event's deliveries go out as one message holding the list
    # of them, as Celery's dispatcher flushes a group ("task.multi"): every event receiver
    # (Flower's) subscribes to the pattern "celeryev/*" and takes a list body. That message
    # is kombu's JSON wrapper around the base64 of the list's JSON. The base64 of a
    # concatenation is the concatenation of the pieces' base64 when every piece but the last
    # is a multiple of 3 bytes long, and JSON allows spaces between tokens: so each piece is
    # padded with spaces and encoded once, those every delivery shares (the argument repr
    # above all, moved to the end of each event, whose keys a reader takes in any order) once
    # per event or per call, and the Redis fan-out's script joins them with each delivery's
    # own encoded piece, without a copy of the arguments per delivery.

    @property
    def multi_channel(self) -> str:
        """Where the task-sent events of one publish go, as one message (``task.multi``)."""
        return self._multi_channel

    def clock_forward(self) -> Any:
        """The dispatcher's clock tick (each task-sent event takes the next value)."""
        return self._dispatcher.clock.forward

    def call_pieces(self) -> tuple[str, str, str]:
        """What the task-sent message of every event of one publish shares, encoded: the
        wrapper and the list up to the first event's clock (the dispatcher's hostname,
        utcoffset and pid), what goes between one event and the next one's clock, and the
        end of the list and the wrapper, up to the delivery tag."""
        dispatcher = self._dispatcher
        # Made again only when the process (a fork) or the local time's offset changes.
        key = (dispatcher.hostname, utcoffset(), dispatcher.pid)
        if self._pieces is not None and self._pieces[0] == key:
            return self._pieces[1]
        head = (
            f'{{"hostname": {_dumps(dispatcher.hostname)}, "utcoffset": {key[1]!r},'
            f' "pid": {dispatcher.pid!r}, "clock": '
        )
        closing = (
            '", "content-encoding": "utf-8", "content-type": "application/json", "headers": '
            f'{_dumps(dispatcher.headers)}, "properties": {{"delivery_mode":'
            f' {dispatcher.delivery_mode!r}, "delivery_info": {{"exchange":'
            f' {_dumps(self._exchange)}, "routing_key": "task.multi"}}, "priority": 0,'
            ' "body_encoding": "base64", "delivery_tag": "'
        )
        pieces = (
            '{"body": "' + _b64_padded("[" + head),
            _b64_padded(", " + head),
            base64.b64encode(b"]").decode() + closing,
        )
        self._pieces = (key, pieces)
        return pieces

    def event_piece(self, parts: EventParts) -> str:
        """The encoded end every task-sent event of one event shares (its argument repr)."""
        return _b64_padded(
            f', "args": {_dumps(parts.argsrepr)}, "kwargs": {_dumps(parts.kwargsrepr)}}}'
        )

    def delivery_piece(self, message: TaskMessage, clock: int, timestamp: float) -> str:
        """The encoded piece of one delivery's task-sent event, between the head the call's
        pieces hold and the event's shared end: clock, ids, shown name, queue and time."""
        queue = _dumps(message.queue)
        return _b64_padded(
            "".join(
                (
                    str(clock),
                    ', "uuid": "',
                    message.task_id,
                    '", "root_id": "',
                    message.root_id,
                    '", "parent_id": ',
                    _dumps(message.parts.parent_id),
                    ', "name": ',
                    _dumps(message.shadow),
                    ', "retries": 0, "eta": null, "expires": null, "queue": ',
                    queue,
                    ', "exchange": "", "routing_key": ',
                    queue,
                    ', "timestamp": ',
                    repr(timestamp),
                    ', "type": "task-sent"',
                )
            )
        )

    def payload(self, messages: Sequence[TaskMessage]) -> str:
        """The one message holding the task-sent events of ``messages`` (deliveries of one
        event), published to :attr:`multi_channel`: assembled from the pieces the Redis
        fan-out's script joins, its body the JSON list of the events :meth:`event` returns
        (with a few more spaces, and args and kwargs last). Its delivery tag is the first
        delivery's."""
        opening, between, closing = self.call_pieces()
        shared = self.event_piece(messages[0].parts)
        forward = self._dispatcher.clock.forward
        now = time.time()
        pieces = [opening]
        for i, message in enumerate(messages):
            pieces += [between] if i else []
            pieces += [self.delivery_piece(message, forward(), now), shared]
        return "".join(pieces) + closing + messages[0].delivery_tag + '"}}'

    def event(self, message: TaskMessage, clock: int, timestamp: float) -> dict[str, Any]:
        """The ``task-sent`` event Celery's dispatcher would make for ``message``."""
        dispatcher = self._dispatcher
        fields = message.sent_event()
        fields.update(queue=message.queue, exchange="", routing_key=message.queue)
        return {
            "hostname": dispatcher.hostname,
            "utcoffset": utcoffset(),
            "pid": dispatcher.pid,
            "clock": clock,
            **fields,
            "timestamp": timestamp,
            "type": "task-sent",
        }

    def wrap(self, event: dict[str, Any], delivery_tag: str) -> str:
        """``event`` wrapped as kombu's Redis transport publishes it (the reference form)."""
        dispatcher = self._dispatcher
        body = base64.b64encode(_dumps(event).encode()).decode()
        return _dumps(
            {
                "body": body,
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": dispatcher.headers,
                "properties": {
                    "delivery_mode": dispatcher.delivery_mode,
                    "delivery_info": {"exchange": self._exchange, "routing_key": "task.sent"},
                    "priority": 0,
                    "body_encoding": "base64",
                    "delivery_tag": delivery_tag,
                },
            }
        )


def _b64_padded(text: str) -> str:
    """The base64 of ``text`` padded with spaces to a multiple of 3 bytes, so that it joins
    the base64 of what follows it as the base64 of the whole would."""
    raw = text.encode()
    return base64.b64encode(raw + b" " * (-len(raw) % 3)).decode()
