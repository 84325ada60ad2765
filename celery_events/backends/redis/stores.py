"""The registry's records, the inboxes and the dead letters in Redis.

Keys under the bus's ``key_prefix`` (``celery_events:`` by default):

- ``registry:{service}``: that service's whole set of subscriptions (its record, see
  ``registry.py``), so that re-registering a service replaces its set in one atomic write, and
  so that a Redis ACL can let each service write its own record and no other's (one hash field
  per service, the layout before, cannot be confined by an ACL);
- ``services``: the set of services that wrote a record, which readers list; ACLs let services
  only add to it (``SADD``), and a publisher that requires signatures reads the record of every
  service it has a key of whatever the set says;
- ``subscriptions``: the hash of records of the layout before (service name -> record), still
  read for every service that has no ``registry:{service}`` key, so that a publisher of this
  version reads the records of subscribers not yet upgraded; ``celery eventbus migrate-registry``
  moves them to their own keys and deletes it (do that before confining services by ACLs);
- ``version``: a random token replaced with every write, which publishers poll to notice
  changes (a token, not a counter, so that a Redis that lost its data and counts again from
  zero can never look unchanged);
- ``published``: a hash of ``"service event-name"`` fields, which services published what
  (the catalog reads it; the fan-out script writes it with a publish's deliveries);
- ``dead:{service}`` (id -> JSON record) and ``dead:{service}:index`` (id scored by time): a
  service's dead letters;
- ``trace:{correlation id}`` (a hash: ``e:{event id}`` and ``r:{task id}:{attempt}`` fields,
  see ``observability/records.py``) and ``trace-event:{event id}`` (its correlation id): the
  trace records every service shares, each expiring ``trace_ttl`` after its last write;
- the inbox and ledger keys of ``inbox.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import redis

from ..base import DeadLetterRecords, StateStore, StoreError
from .client import store_error, store_errors
from .inbox import BrokerAcks, Inbox
from .ledger import LedgerInbox

__all__ = ["RedisRegistry", "RedisState", "RedisDeadLetters", "RedisTraces", "LedgerState"]


def _failed(exc: redis.RedisError, fix: str | None = None) -> StoreError:
    return store_error(exc, fix)


_translated = store_errors


class RedisRegistry:
    """The registry store on one Redis."""

    def __init__(self, client: redis.Redis, key_prefix: str = "celery_events:") -> None:
        self.client = client
        self.key_prefix = key_prefix
        #: The hash of records of the layout before (read only where no record key exists).
        self.subscriptions_key = f"{key_prefix}subscriptions"
        self.services_key = f"{key_prefix}services"
        self.version_key = f"{key_prefix}version"
        self.published_key = f"{key_prefix}published"

    def record_key(self, service: str) -> str:
        """The key of ``service``'s record."""
        return f"{self.key_prefix}registry:{service}"

    def _write_fix(self, exc: redis.RedisError, service: str) -> str | None:
        if isinstance(exc, redis.exceptions.NoPermissionError) or "permission" in str(exc):
            return (
                f"The registry's Redis user may not write the record of service {service!r}:"
                f" grant it write rights on {self.record_key(service)} and {self.version_key}"
                f" and SADD on {self.services_key} (celery eventbus acl prints the rules), or"
                " use a registry_url whose user may. Under those rules a service may write"
                " only its own record."
            )
        return None

    def write(self, service: str, record: str) -> None:
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.set(self.record_key(service), record)
                pipe.sadd(self.services_key, service)
                pipe.set(self.version_key, uuid.uuid4().hex)
                pipe.execute()
        except redis.RedisError as exc:
            raise _failed(exc, self._write_fix(exc, service)) from exc

    def remove(self, service: str) -> None:
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(self.record_key(service))
                # Else the record of the layout before would be read again in its place.
                pipe.hdel(self.subscriptions_key, service)
                pipe.srem(self.services_key, service)
                pipe.set(self.version_key, uuid.uuid4().hex)
                pipe.execute()
        except redis.RedisError as exc:
            raise _failed(exc, self._write_fix(exc, service)) from exc

    def migrate(self) -> list[str]:
        """Move the records of the layout before to their own keys (a record key already
        there is newer and is kept), then delete the old hash; return the services moved."""
        try:
            old: dict[Any, Any] = self.client.hgetall(self.subscriptions_key)
            moved = []
            with self.client.pipeline(transaction=True) as pipe:
                for field, record in sorted(old.items()):
                    service = _text(field)
                    pipe.set(self.record_key(service), record, nx=True)
                    pipe.sadd(self.services_key, service)
                    moved.append(service)
                pipe.delete(self.subscriptions_key)
                pipe.set(self.version_key, uuid.uuid4().hex)
                pipe.execute()
        except redis.RedisError as exc:
            raise _failed(exc) from exc
        return moved

    def version(self) -> bytes | None:
        try:
            version = self.client.get(self.version_key)
        except redis.RedisError as exc:
            raise _failed(exc) from exc
        return version if version is None or isinstance(version, bytes) else str(version).encode()

    def load(self, known: Sequence[str] = ()) -> tuple[bytes | None, dict[bytes, bytes]]:
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.get(self.version_key)
                pipe.smembers(self.services_key)
                pipe.hgetall(self.subscriptions_key)
                version, listed, legacy = pipe.execute()
            # The version was read first: a write after it changes it, and the next check
            # reloads, so the records read below are never taken for an older version's.
            services = sorted({_text(s) for s in listed} | {_text(f) for f in legacy} | set(known))
            raws = self.client.mget([self.record_key(s) for s in services]) if services else []
        except redis.RedisError as exc:
            raise _failed(exc) from exc
        records: dict[bytes, bytes] = {}
        for service, raw in zip(services, raws, strict=True):
            if raw is None:
                raw = legacy.get(service.encode())
            if raw is not None:
                records[service.encode()] = _bytes(raw)
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


class RedisTraces:
    """The trace records of every service sharing one Redis: a hash per correlation id."""

    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        self.client = client
        self.key_prefix = key_prefix

    def group_key(self, correlation_id: str) -> str:
        return f"{self.key_prefix}trace:{correlation_id}"

    def event_key(self, event_id: str) -> str:
        return f"{self.key_prefix}trace-event:{event_id}"

    def write(
        self, correlation_id: str, event_ids: Sequence[str], fields: dict[str, str], ttl: float
    ) -> None:
        # Milliseconds, so that a fraction of a second is kept as given.
        ttl_ms = max(1, int(ttl * 1000))
        key = self.group_key(correlation_id)
        with _translated(), self.client.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]  # Mapping keys are invariant
            pipe.pexpire(key, ttl_ms)
            for event_id in event_ids:
                pipe.set(self.event_key(event_id), correlation_id, px=ttl_ms)
            pipe.execute()

    def correlation_of(self, event_id: str) -> str | None:
        with _translated():
            found = self.client.get(self.event_key(event_id))
        return None if found is None else _text(found)

    def load(self, correlation_id: str) -> dict[str, str]:
        with _translated():
            raw: dict[Any, Any] = self.client.hgetall(self.group_key(correlation_id))
        return {_text(k): _text(v) for k, v in raw.items()}


class RedisState:
    """Inboxes and dead letters of every service sharing one Redis, and its trace records."""

    def __init__(
        self, client: redis.Redis, key_prefix: str, broker_acks: BrokerAcks | None = None
    ) -> None:
        self.client = client
        self.key_prefix = key_prefix
        #: On the broker's own Redis: where its unacked messages are, for inboxes that
        #: acknowledge a delivery's message with its success record.
        self.broker_acks = broker_acks

    def inbox(self, service: str) -> Inbox:
        return Inbox(self.client, service, self.key_prefix, self.broker_acks)

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

    def traces(self) -> RedisTraces:
        return RedisTraces(self.client, self.key_prefix)

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

    def traces(self) -> RedisTraces:
        """On the broker's Redis, beside the ledger: the bus's own store may keep none."""
        return RedisTraces(self.client, self.key_prefix)

    def close(self) -> None:
        self.state.close()


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
