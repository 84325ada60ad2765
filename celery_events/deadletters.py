"""Dead letters: deliveries that gave up, kept with their error until replayed or purged.

A delivery becomes a dead letter when its retries are used up, when its handler raised
:class:`~celery_events.Reject`, when its envelope is invalid, when it was delivered
``max_deliveries`` times without finishing (a poison message that kills its worker), or when
what arrived on a service's queue was not a message the service could read (garbage bytes,
JSON that is not a Celery message, pickle, an unknown handler): then the raw payload is kept.

They are stored per service by the backend's state store (on Redis, a hash of records and an
index sorted by time, ``backends/redis/stores.py``), and
nothing is dropped unless the ``dead_letter_limit`` setting asks for it (which is logged).
Each record carries its format number (``format``). A stored record that cannot be read (not
JSON, fields missing or of the wrong type, a newer format) is listed, shown, counted and purged
like any other, as a letter of reason ``unreadable_record`` holding the stored text; it is never
replayed.

A replay goes only to a handler its service subscribes, on that handler's own queue (never the
queue or handler of an edited record alone), with an envelope that is a valid event.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from . import _plainjson
from .backends.base import DeadLetterRecords, StoreError
from .envelope import Event
from .errors import CeleryEventsError, InvalidEnvelope, RegistryError, describe, shown

__all__ = ["DeadLetter", "DeadLetterStore", "DeadLetterNotFound", "ReplayError", "Reason"]

log = logging.getLogger(__name__)


class Reason:
    """Why a delivery became a dead letter (the ``reason`` field)."""

    RETRIES_EXHAUSTED = "retries_exhausted"
    REJECTED = "rejected"
    NOT_RETRIED = "not_retried"
    INVALID_ENVELOPE = "invalid_envelope"
    TOO_MANY_DELIVERIES = "too_many_deliveries"
    LOST_TOO_OFTEN = "lost_too_often"
    UNREADABLE = "unreadable_message"
    #: The lost-delivery ledger held an entry the sweeper could not read; its raw text is kept.
    UNREADABLE_LEDGER_ENTRY = "unreadable_ledger_entry"
    UNKNOWN_HANDLER = "unknown_handler"
    #: The stored record itself could not be read; its text is kept in ``raw``.
    UNREADABLE_RECORD = "unreadable_record"
    #: The envelope's signature was missing, unreadable, made with an unknown key or by
    #: another service than its source, did not match, or was older than the window.
    INVALID_SIGNATURE = "invalid_signature"
    #: The event's (verified) source may not publish its name to this service (scopes).
    NOT_ALLOWED = "not_allowed"
    #: A sensitive field of the event could not be decrypted: encrypted with a key this
    #: service does not have (or it has no ``encryption_keys``), or its ciphertext was changed
    #: or moved from another event or field. Replay it once the key is there.
    UNDECRYPTABLE = "undecryptable"
    #: The event's data broke the schema it was received under (the declaration its
    #: ``dataschema`` names, or the handler's own model), or its version is not one the
    #: handler accepts.
    SCHEMA_MISMATCH = "schema_mismatch"


#: The format of the dead-letter records this version writes (the ``format`` field). Records
#: without one were written before it existed, in format 1.
FORMAT = 1


class DeadLetterNotFound(CeleryEventsError, KeyError):
    """No dead letter has that id in this service's store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ReplayError(CeleryEventsError):
    """A dead letter cannot be replayed: it has no handler or no valid envelope, or its handler
    is not one its service subscribes."""


@dataclass(frozen=True)
class DeadLetter:
    """One delivery that gave up, with everything needed to understand and replay it."""

    id: str
    service: str
    reason: str
    #: The handler's task name, or ``None`` when the message could not be attributed.
    handler: str | None
    event_name: str | None
    event_id: str | None
    #: The CloudEvents envelope, when one could be read.
    envelope: dict[str, Any] | None
    error_type: str
    error_message: str
    traceback: str | None
    #: How many times the handler ran (or was started) for this delivery.
    attempts: int
    first_failed_at: float
    last_failed_at: float
    hostname: str | None
    task_id: str | None = None
    queue: str | None = None
    #: The raw message in base64, when it could not be read as a delivery.
    raw_base64: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def raw(self) -> bytes | None:
        """The raw message bytes, for messages that could not be read."""
        return None if self.raw_base64 is None else base64.b64decode(self.raw_base64)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: object) -> DeadLetter:
        """Read a stored record; raise ``ValueError`` saying what is wrong with it.

        Fields this version does not know (written by a newer one of the same format) are kept
        in ``extra``; a record of a newer format is refused.
        """
        if not isinstance(data, dict):
            raise ValueError(f"it is a JSON {type(data).__name__}, not an object")
        fields = dict(data)
        version = fields.pop("format", 1)
        if isinstance(version, bool) or not isinstance(version, int):
            raise ValueError(f"its format is {version!r}, not a whole number")
        if version > FORMAT:
            raise ValueError(
                f"it is in format {version}, written by a newer celery-events (this one reads"
                f" up to format {FORMAT}); upgrade to read it"
            )
        known = {name: fields.pop(name) for name in _FIELD_TYPES if name in fields}
        missing = [name for name in _REQUIRED_FIELDS if name not in known]
        if missing:
            raise ValueError(f"it lacks the field(s) {', '.join(missing)}")
        for name, value in known.items():
            expected = _FIELD_TYPES[name]
            if not _is(value, expected):
                raise ValueError(f"its {name} is {shown(value)}, not {expected}")
        raw = known.get("raw_base64")
        if raw is not None:
            try:
                base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("its raw_base64 is not base64") from None
        if fields:  # unknown fields of the same format: kept, not lost
            known["extra"] = {**known.get("extra", {}), **fields}
        return cls(**known)


_TEXT, _OPTIONAL_TEXT, _NUMBER = "a string", "a string or null", "a number"
_FIELD_TYPES = {
    "id": _TEXT,
    "service": _TEXT,
    "reason": _TEXT,
    "handler": _OPTIONAL_TEXT,
    "event_name": _OPTIONAL_TEXT,
    "event_id": _OPTIONAL_TEXT,
    "envelope": "an object or null",
    "error_type": _TEXT,
    "error_message": _TEXT,
    "traceback": _OPTIONAL_TEXT,
    "attempts": "a whole number",
    "first_failed_at": _NUMBER,
    "last_failed_at": _NUMBER,
    "hostname": _OPTIONAL_TEXT,
    "task_id": _OPTIONAL_TEXT,
    "queue": _OPTIONAL_TEXT,
    "raw_base64": _OPTIONAL_TEXT,
    "extra": "an object",
}
_REQUIRED_FIELDS = ("id", "service", "reason", "error_type", "error_message", "last_failed_at")


def _is(value: object, expected: str) -> bool:
    if expected.endswith(" or null") and value is None:
        return True
    if expected in (_TEXT, _OPTIONAL_TEXT):
        return isinstance(value, str)
    if expected in ("an object", "an object or null"):
        return isinstance(value, dict)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) if expected == "a whole number" else math.isfinite(value)


def read_record(id: str, service: str, raw: bytes, stored_at: float) -> DeadLetter:
    """The dead letter stored as ``raw`` under ``id`` in ``service``'s store, indexed at
    ``stored_at``; an unreadable record becomes a letter of reason ``unreadable_record``."""
    try:
        letter = DeadLetter.from_json(_plainjson.loads(raw))
        if letter.id != id or letter.service != service:
            raise ValueError(
                f"it names dead letter {letter.id!r} of service {letter.service!r}, but is"
                f" stored as {id!r} of {service!r}"
            )
        return letter
    except (ValueError, TypeError) as exc:
        problem = str(exc) or type(exc).__name__
    return DeadLetter(
        id=id,
        service=service,
        reason=Reason.UNREADABLE_RECORD,
        handler=None,
        event_name=None,
        event_id=None,
        envelope=None,
        error_type="UnreadableRecord",
        error_message=(
            f"The stored dead-letter record cannot be read: {problem}. Its text is kept as raw;"
            " it cannot be replayed, but it can be purged."
        ),
        traceback=None,
        attempts=0,
        first_failed_at=stored_at,
        last_failed_at=stored_at,
        hostname=None,
        raw_base64=base64.b64encode(raw).decode(),
    )


Letters = list[DeadLetter]
Ids = list[str]
#: ``(id, time indexed)`` pairs of the index.
Indexed = list[tuple[str, float]]

#: Sends a fresh delivery of an envelope to a handler on a queue; returns the new task id.
Resender = Callable[[dict[str, Any], str, str], str]
#: The queue of a handler the service subscribes; raises :class:`ReplayError` for any other.
Router = Callable[[str], str]
#: Checks an envelope before it is replayed; raises :class:`ReplayError` when no subscriber
#: would take it now (a signed event older than ``signature_max_age``).
ReplayCheck = Callable[[dict[str, Any]], None]


class DeadLetterStore:
    """The dead letters of one service, kept in a backend's records (``records``).

    The bus makes its own (``bus.dead_letters``); ``records`` is a
    :class:`~celery_events.backends.base.DeadLetterRecords` from a backend's state store.

    >>> from celery import Celery
    >>> from celery_events import EventBus
    >>> from celery_events.testing import HandlerRunner
    >>> bus = EventBus(Celery("orders", broker="memory://"), service="orders")
    >>> @bus.subscribe("user.registered", max_retries=0)
    ... def welcome_order(event):
    ...     raise KeyError(event.data["user_id"])
    >>> bus.register()
    [Subscription(pattern='user.registered', ...)]
    >>> result = bus.publish("user.registered", {"user_id": 7})
    >>> [run] = HandlerRunner().work(bus)
    >>> bus.dead_letters.list(handler="orders.welcome_order")
    [DeadLetter(id='...', service='orders', reason='retries_exhausted', ...)]
    >>> [letter.event_id for letter in bus.dead_letters.replay(event_name="user.registered")]
    ['...']
    """

    def __init__(
        self,
        records: DeadLetterRecords,
        service: str,
        *,
        limit: int | None = None,
        resend: Resender | None = None,
        route: Router | None = None,
        check: ReplayCheck | None = None,
    ) -> None:
        self.records = records
        self.service = service
        self.limit = limit
        self._resend = resend
        self._route = route
        self._check = check

    def add(self, letter: DeadLetter) -> DeadLetter:
        """Store ``letter`` durably (both keys in one transaction)."""
        try:
            self.records.add(letter.id, json.dumps(letter.to_json()), letter.last_failed_at)
        except StoreError as exc:
            raise RegistryError(f"Could not store dead letter {letter.id}: {describe(exc)}.") from exc
        log.error(
            "celery-events: dead letter %s: %s for %s (event %s %s): %s: %s",
            letter.id,
            letter.reason,
            letter.handler or letter.queue,
            letter.event_name,
            letter.event_id,
            letter.error_type,
            letter.error_message,
        )
        if self.limit is not None:
            self._trim(self.limit)
        return letter

    def _trim(self, limit: int) -> None:
        oldest = self.records.trim(limit)
        if not oldest:
            return
        log.warning(
            "celery-events: dropped the %d oldest dead letter(s) of service %r to keep the"
            " dead_letter_limit of %d: %s",
            len(oldest),
            self.service,
            limit,
            ", ".join(oldest),
        )

    def list(
        self,
        *,
        handler: str | None = None,
        event_name: str | None = None,
        reason: str | None = None,
        limit: int | None = 100,
    ) -> Letters:
        """Dead letters, newest first, filtered by handler, event name and reason."""
        found: Letters = []
        for letter in self._load(self.records.newest_first()):
            if handler is not None and letter.handler != handler:
                continue
            if event_name is not None and letter.event_name != event_name:
                continue
            if reason is not None and letter.reason != reason:
                continue
            found.append(letter)
            if limit is not None and len(found) >= limit:
                break
        return found

    def count(self, handler: str | None = None) -> int:
        """How many dead letters the service holds (for one handler, if given)."""
        if handler is None:
            return self.records.count()
        return len(self.list(handler=handler, limit=None))

    def get(self, id: str) -> DeadLetter:
        """One dead letter, or :class:`DeadLetterNotFound`."""
        found = self.records.get(id)
        if found is None:
            raise DeadLetterNotFound(
                f"Service {self.service!r} has no dead letter {id!r}; list them with"
                " bus.dead_letters.list() or `celery -A app eventbus dead-letters list`."
            )
        raw, score = found
        return read_record(id, self.service, raw, score)

    def replay(
        self,
        id: str | None = None,
        *,
        handler: str | None = None,
        event_name: str | None = None,
        reason: str | None = None,
    ) -> Letters:
        """Send each selected dead letter again, as a fresh delivery to the same handler.

        A record leaves the store once its replay is sent. With no argument at all, every
        dead letter of the service is replayed. Returns the replayed letters.
        """
        if self._resend is None:
            raise ReplayError("This dead-letter store was made without a way to resend.")
        letters = self._select(id, handler, event_name, reason)
        # Every letter is checked before any is sent: none is replayed if one cannot be.
        plans = [self.replay_target(letter) for letter in letters]
        for letter, (envelope, to_handler, queue) in zip(letters, plans, strict=True):
            self._resend(envelope, to_handler, queue)
            self._remove([letter.id])
            log.info(
                "celery-events: replayed dead letter %s to %s on %s", letter.id, to_handler, queue
            )
        return letters

    def replay_target(self, letter: DeadLetter) -> tuple[dict[str, Any], str, str]:
        """The ``(envelope, handler, queue)`` a replay of ``letter`` sends, or
        :class:`ReplayError` saying why it cannot be replayed.

        The handler must be one the service subscribes and the queue is that subscription's,
        whatever the stored record says: an edited record cannot run another task or reach
        another queue.
        """
        how = "inspect it with get() or `eventbus dead-letters show`, and purge it"
        if letter.reason == Reason.UNREADABLE_RECORD:
            raise ReplayError(f"Dead letter {letter.id} cannot be replayed: {letter.error_message}")
        if letter.handler is None or letter.envelope is None:
            raise ReplayError(
                f"Dead letter {letter.id} ({letter.reason}) has no handler or no readable"
                f" envelope, so it cannot be replayed; {how}."
            )
        try:
            Event.from_envelope(letter.envelope)
        except InvalidEnvelope as exc:
            raise ReplayError(
                f"Dead letter {letter.id} cannot be replayed: its envelope is not a valid event"
                f" ({exc}); {how}."
            ) from exc
        if self._check is not None:
            try:
                self._check(letter.envelope)
            except ReplayError as exc:
                raise ReplayError(f"Dead letter {letter.id} cannot be replayed: {exc}") from exc
        if self._route is None:
            raise ReplayError(
                "This dead-letter store was made without the subscriptions of its service, so it"
                " cannot check where a replay may go."
            )
        return letter.envelope, letter.handler, self._route(letter.handler)

    def purge(
        self,
        id: str | None = None,
        *,
        handler: str | None = None,
        event_name: str | None = None,
        reason: str | None = None,
    ) -> int:
        """Delete the selected dead letters for good; returns how many."""
        letters = self._select(id, handler, event_name, reason)
        self._remove([letter.id for letter in letters])
        return len(letters)

    def _select(
        self, id: str | None, handler: str | None, event_name: str | None, reason: str | None
    ) -> Letters:
        if id is not None:
            return [self.get(id)]
        return self.list(handler=handler, event_name=event_name, reason=reason, limit=None)

    def _remove(self, ids: Iterable[str]) -> None:
        ids = [*ids]
        if not ids:
            return
        self.records.remove(ids)

    def _load(self, indexed: Indexed) -> Letters:
        if not indexed:
            return []
        letters = []
        records = self.records.load([id for id, _ in indexed])
        for (id, stored_at), raw in zip(indexed, records, strict=True):
            if raw is not None:
                letters.append(read_record(id, self.service, raw, stored_at))
        return letters


def new_letter(
    *,
    service: str,
    reason: str,
    error: BaseException | None = None,
    error_type: str | None = None,
    error_message: str | None = None,
    traceback: str | None = None,
    handler: str | None = None,
    envelope: dict[str, Any] | None = None,
    attempts: int = 0,
    first_failed_at: float | None = None,
    hostname: str | None = None,
    task_id: str | None = None,
    queue: str | None = None,
    raw: bytes | None = None,
    id: str | None = None,
) -> DeadLetter:
    """Make a dead letter, reading what it can from the envelope."""
    now = time.time()
    name = envelope.get("type") if isinstance(envelope, dict) else None
    event_id = envelope.get("id") if isinstance(envelope, dict) else None
    return DeadLetter(
        id=id or uuid.uuid4().hex,
        service=service,
        reason=reason,
        handler=handler,
        event_name=name if isinstance(name, str) else None,
        event_id=event_id if isinstance(event_id, str) else None,
        envelope=envelope if isinstance(envelope, dict) else None,
        error_type=error_type or (type(error).__name__ if error is not None else reason),
        error_message=error_message if error_message is not None else str(error or ""),
        traceback=traceback,
        attempts=attempts,
        first_failed_at=first_failed_at or now,
        last_failed_at=now,
        hostname=hostname,
        task_id=task_id,
        queue=queue,
        raw_base64=None if raw is None else base64.b64encode(raw).decode(),
    )
