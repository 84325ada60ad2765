"""The registry's records, the inboxes and the dead letters in Redis.

Keys under the bus's ``key_prefix`` (``celery_events:`` by default):

- ``subscriptions``: a hash from service name to that service's whole set of subscriptions,
  so that re-registering a service replaces its set in one atomic write;
- ``version``: a random token replaced with every write, which publishers poll to notice
  changes (a token, not a counter, so that a Redis that lost its data and counts again from
  zero can never look unchanged);
- ``published``: a hash of ``"service event-name"`` fields, which services published what
  (the catalog reads it; the fan-out script writes it with a publish's deliveries);
- ``dead:{service}`` (id -> JSON record) and ``dead:{service}:index`` (id scored by time): a
  service's dead letters;
- the inbox and ledger keys of ``inbox.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import redis

from ..base import DeadLetterRecords, StateStore, StoreError
from .client import store_error, store_errors
from .inbox import Inbox, LedgerInbox

__all__ = ["RedisRegistry", "RedisState", "RedisDeadLetters", "LedgerState"]


def _failed(exc: redis.RedisError, fix: str | None = None) -> StoreError:
    return store_error(exc, fix)


_translated = store_errors


class RedisRegistry:
    """The registry store on one Redis."""

    def __init__(self, client: redis.Redis, key_prefix: str = "celery_events:") -> None:
        self.client = client
        self.subscriptions_key = f"{key_prefix}subscriptions"
        self.version_key = f"{key_prefix}version"
        self.published_key = f"{key_prefix}published"

    def _write_fix(self, exc: redis.RedisError) -> str | None:
        if isinstance(exc, redis.exceptions.NoPermissionError) or "permission" in str(exc):
            return (
                "The registry's Redis user may not write it: grant write rights on"
                f" {self.subscriptions_key} and {self.version_key} (ACL SETUSER <user>"
                " '~*', or the bus's key_prefix), or use a registry_url whose user may."
            )
        return None

    def write(self, service: str, record: str) -> None:
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(self.subscriptions_key, service, record)
                pipe.set(self.version_key, uuid.uuid4().hex)
                pipe.execute()
        except redis.RedisError as exc:
            raise _failed(exc, self._write_fix(exc)) from exc

    def remove(self, service: str) -> None:
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hdel(self.subscriptions_key, service)
                pipe.set(self.version_key, uuid.uuid4().hex)
                pipe.execute()
        except redis.RedisError as exc:
            raise _failed(exc, self._write_fix(exc)) from exc

    def version(self) -> bytes | None:
        try:
            version = self.client.get(self.version_key)
        except redis.RedisError as exc:
            raise _failed(exc) from exc
        return version if version is None or isinstance(version, bytes) else str(version).encode()

    def load(self) -> tuple[bytes | None, dict[bytes, bytes]]:
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.get(self.version_key)
                pipe.hgetall(self.subscriptions_key)
                version, records = pipe.execute()
        except redis.RedisError as exc:
            raise _failed(exc) from exc
        return version, records

    def record_published(self, field: str, value: str) -> None:
        try:
            self.client.hset(self.published_key, field, value)
        except redis.RedisError as exc:
            raise _failed(exc) from exc

    def published(self) -> list[str]:
        try:
            raw: dict[Any, Any] = self.client.hgetall(self.published_key)
        except redis.RedisError as exc:
            raise _failed(exc) from exc
        return [f.decode(errors="replace") if isinstance(f, bytes) else str(f) for f in raw]

    def close(self) -> None:
        self.client.close()


class RedisDeadLetters:
    """One service's dead letters: a hash of records and a sorted index by time."""

    def __init__(self, client: redis.Redis, service: str, key_prefix: str) -> None:
        self.client = client
        self.records_key = f"{key_prefix}dead:{service}"
        self.index_key = f"{key_prefix}dead:{service}:index"

    def add(self, id: str, record: str, score: float) -> None:
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(self.records_key, id, record)
                pipe.zadd(self.index_key, {id: score})
                pipe.execute()
        except redis.RedisError as exc:
            raise _failed(exc) from exc

    def trim(self, limit: int) -> list[str]:
        with _translated():
            excess = int(self.client.zcard(self.index_key)) - limit
            if excess <= 0:
                return []
            oldest = [_text(i) for i in self.client.zrange(self.index_key, 0, excess - 1)]
        self.remove(oldest)
        return oldest

    def newest_first(self) -> list[tuple[str, float]]:
        with _translated():
            indexed: Any = self.client.zrevrange(self.index_key, 0, -1, withscores=True)
        return [(_text(i), float(score)) for i, score in indexed]

    def get(self, id: str) -> tuple[bytes, float] | None:
        with _translated(), self.client.pipeline(transaction=False) as pipe:
            pipe.hget(self.records_key, id)
            pipe.zscore(self.index_key, id)
            raw, score = pipe.execute()
        if raw is None:
            return None
        return _bytes(raw), float(score or 0.0)

    def load(self, ids: Sequence[str]) -> list[bytes | None]:
        if not ids:
            return []
        with _translated():
            records = self.client.hmget(self.records_key, list(ids))
        return [None if raw is None else _bytes(raw) for raw in records]

    def remove(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with _translated(), self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(self.records_key, *ids)
            pipe.zrem(self.index_key, *ids)
            pipe.execute()

    def count(self) -> int:
        with _translated():
            return int(self.client.zcard(self.index_key))


class RedisState:
    """Inboxes and dead letters of every service sharing one Redis."""

    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        self.client = client
        self.key_prefix = key_prefix

    def inbox(self, service: str) -> Inbox:
        return Inbox(self.client, service, self.key_prefix)

    def dead_letters(self, service: str) -> RedisDeadLetters:
        return RedisDeadLetters(self.client, service, self.key_prefix)

    def dead_letter_services(self) -> list[str]:
        found = set()
        head, tail = f"{self.key_prefix}dead:", ":index"
        with _translated():
            for key in self.client.scan_iter(match=f"{head}*{tail}", count=500):
                text = key.decode() if isinstance(key, bytes) else str(key)
                service = text[len(head) : -len(tail)]
                if service and ":" not in service:
                    found.add(service)
        return sorted(found)

    def close(self) -> None:
        self.client.close()


class LedgerState:
    """A state store the bus brings (the Django database's), with each service's lost-delivery
    ledger kept beside it in the broker's Redis (:class:`~.inbox.LedgerInbox`)."""

    def __init__(self, state: StateStore, client: redis.Redis, key_prefix: str) -> None:
        self.state = state
        self.client = client
        self.key_prefix = key_prefix

    def inbox(self, service: str) -> LedgerInbox:
        return LedgerInbox(self.state.inbox(service), self.client, service, self.key_prefix)

    def dead_letters(self, service: str) -> DeadLetterRecords:
        return self.state.dead_letters(service)

    def dead_letter_services(self) -> list[str]:
        return self.state.dead_letter_services()

    def close(self) -> None:
        self.state.close()


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
