"""Dead letters: deliveries that gave up, kept with their error until replayed or purged.

A delivery becomes a dead letter when its retries are used up, when its handler raised
:class:`~celery_events.Reject`, when its envelope is invalid, when it was delivered
``max_deliveries`` times without finishing (a poison message that kills its worker), or when
what arrived on a service's queue was not a message the service could read (garbage bytes,
JSON that is not a Celery message, pickle, an unknown handler): then the raw payload is kept.

They are stored in Redis per service, in a hash of records and an index sorted by time, and
nothing is dropped unless the ``dead_letter_limit`` setting asks for it (which is logged).
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from .errors import CeleryEventsError, RegistryError, describe

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


class DeadLetterNotFound(CeleryEventsError, KeyError):
    """No dead letter has that id in this service's store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ReplayError(CeleryEventsError):
    """A dead letter cannot be replayed (it has no handler or no readable envelope)."""


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
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeadLetter:
        return cls(**data)


Letters = list[DeadLetter]
Ids = list[str]

#: Sends a fresh delivery of an envelope to a handler on a queue; returns the new task id.
Resender = Callable[[dict[str, Any], str, str], str]


class DeadLetterStore:
    """The dead letters of one service.

    >>> bus.dead_letters.list(handler="orders.welcome_order")       # doctest: +SKIP
    [DeadLetter(id='…', reason='retries_exhausted', ...)]
    >>> bus.dead_letters.replay(event_name="user.registered")       # doctest: +SKIP
    """

    def __init__(
        self,
        client: redis.Redis,
        service: str,
        *,
        key_prefix: str = "celery_events:",
        limit: int | None = None,
        resend: Resender | None = None,
    ) -> None:
        self.client = client
        self.service = service
        self.records_key = f"{key_prefix}dead:{service}"
        self.index_key = f"{key_prefix}dead:{service}:index"
        self.limit = limit
        self._resend = resend

    def add(self, letter: DeadLetter) -> DeadLetter:
        """Store ``letter`` durably (both keys in one transaction)."""
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(self.records_key, letter.id, json.dumps(letter.to_json()))
                pipe.zadd(self.index_key, {letter.id: letter.last_failed_at})
                pipe.execute()
        except redis.RedisError as exc:
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
        excess = self.client.zcard(self.index_key) - limit
        if excess <= 0:
            return
        oldest = [_text(i) for i in self.client.zrange(self.index_key, 0, excess - 1)]
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(self.records_key, *oldest)
            pipe.zrem(self.index_key, *oldest)
            pipe.execute()
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
        ids = [_text(i) for i in self.client.zrevrange(self.index_key, 0, -1)]
        found: Letters = []
        for letter in self._load(ids):
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
            return int(self.client.zcard(self.index_key))
        return len(self.list(handler=handler, limit=None))

    def get(self, id: str) -> DeadLetter:
        """One dead letter, or :class:`DeadLetterNotFound`."""
        raw = self.client.hget(self.records_key, id)
        if raw is None:
            raise DeadLetterNotFound(
                f"Service {self.service!r} has no dead letter {id!r}; list them with"
                " bus.dead_letters.list() or `celery -A app eventbus dead-letters list`."
            )
        return DeadLetter.from_json(json.loads(raw))

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
        for letter in letters:
            if letter.handler is None or letter.envelope is None or letter.queue is None:
                raise ReplayError(
                    f"Dead letter {letter.id} ({letter.reason}) has no handler or no readable"
                    " envelope, so it cannot be replayed; inspect it with get() and purge it."
                )
        for letter in letters:
            self._resend(letter.envelope, letter.handler, letter.queue)  # type: ignore[arg-type]
            self._remove([letter.id])
            log.info("celery-events: replayed dead letter %s to %s", letter.id, letter.handler)
        return letters

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
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(self.records_key, *ids)
            pipe.zrem(self.index_key, *ids)
            pipe.execute()

    def _load(self, ids: Ids) -> Letters:
        if not ids:
            return []
        letters = []
        for raw in self.client.hmget(self.records_key, ids):
            if raw is not None:
                letters.append(DeadLetter.from_json(json.loads(raw)))
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


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
