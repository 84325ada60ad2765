"""An in-process backend for ``Celery(broker="memory://")``: unit tests and users' tests.

The transport is kombu's in-memory transport through Celery's own producer, so deliveries are
the real task messages a worker in the same process (``celery.contrib.testing.worker``, say)
consumes and runs through the real delivery path: inbox, retries, dead letters. Registry,
inboxes and dead letters are Python dicts under one lock, shared by every bus of the process
on the same ``memory://`` URL (``memory://other`` is another space), and gone with the
process. Nothing here survives a crash, so it promises no recovery: see :data:`CAPABILITIES`.

>>> from celery import Celery
>>> from celery_events import EventBus
>>> bus = EventBus(Celery("shop", broker="memory://"), service="shop")
>>> bus.backend.name
'memory'
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import ConfigurationError, PublishError, describe
from .base import Backend, Capabilities, Claim, QueueReader, ServiceBus, StateStore
from .kombu import KombuTransport

if TYPE_CHECKING:
    from .base import Outgoing

__all__ = ["CAPABILITIES", "MemoryTransport", "MemoryState", "MemoryRegistry", "reset", "open_backend"]

#: ``publish_many`` is all or nothing (``MemoryTransport.send_many``); nothing survives a crash.
CAPABILITIES = Capabilities(atomic_batches=True)

#: The token of this process's leases; in one process every holder is alive.
_PROCESS = uuid.uuid4().hex


@dataclass
class _Space:
    """Everything one ``memory://`` URL holds."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    #: service -> registry record
    records: dict[str, bytes] = field(default_factory=dict)
    version: bytes | None = None
    published: dict[str, str] = field(default_factory=dict)
    #: (handler, event id) -> (value, expires at, monotonic); value is "done" or a lease
    inbox: dict[tuple[str, str], tuple[str, float]] = field(default_factory=dict)
    #: task id -> starts, failures, first_failed_at
    deliveries: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: service -> id -> (record, score)
    dead: dict[str, dict[str, tuple[bytes, float]]] = field(default_factory=dict)
    #: correlation id -> (trace record fields, expires at, monotonic)
    traces: dict[str, tuple[dict[str, str], float]] = field(default_factory=dict)
    #: event id -> (correlation id, expires at, monotonic)
    trace_events: dict[str, tuple[str, float]] = field(default_factory=dict)


_spaces: dict[str, _Space] = {}
_spaces_lock = threading.Lock()


def _space(url: str) -> _Space:
    parts = urlsplit(url)
    name = f"{parts.netloc}{parts.path}".strip("/")
    with _spaces_lock:
        space = _spaces.get(name)
        if space is None:
            space = _spaces[name] = _Space()
        return space


def reset() -> None:
    """Forget every registry, inbox and dead letter of every ``memory://`` space, and empty
    kombu's in-memory queues (between tests)."""
    from kombu.transport import memory

    with _spaces_lock:
        _spaces.clear()
    for queue in list(memory.Channel.queues.values()):
        while not queue.empty():
            queue.get_nowait()


class MemoryTransport(KombuTransport):
    """Celery's producer on kombu's in-memory transport (deliveries sent one by one).

    ``send_many`` is all or nothing: every message of every event goes through Celery's
    producer as ``send`` sends it, but into a list, and only once all of them went through
    are they put on their queues (which cannot fail), so a message the producer refuses
    leaves no queue holding any of the call's. (Celery's ``before``/``after_task_publish``
    signals of the messages before it have fired by then.)
    """

    def __init__(self, app: Any, timeout: float) -> None:
        super().__init__(app, timeout, "memory")

    def send_many(self, batches: Sequence[Outgoing]) -> None:
        messages = [message for batch, _ in batches for message in batch]
        if not messages:
            return
        staged: list[tuple[str, Any]] = []
        with self.app.producer_or_acquire() as producer:
            channel = producer.channel
            # The producer is ours inside the block: its channel stages what it is given.
            channel._put = lambda queue, message, **kwargs: staged.append((queue, message))
            try:
                self._send_through(producer, messages)
            except PublishError as exc:
                raise PublishError(
                    f"The broker did not take the events: {describe(exc.__cause__ or exc)}."
                    " None of this publish_many's deliveries was sent."
                ) from exc
            finally:
                del channel._put
            for queue, message in staged:
                channel._put(queue, message)

    def queue_reader(self, timeout: float) -> QueueReader:
        raise ConfigurationError(
            "The broker is memory://, whose queues live inside one process; queue status is"
            " read from a Redis broker only."
        )

    def prepare_worker(self, bus: ServiceBus) -> None:
        """Nothing to adjust: a worker on memory:// runs in the publishing process."""


class _Inbox:
    """One service's bookkeeping, as the Redis scripts keep it, in a dict."""

    #: The broker's messages are acknowledged by the worker.
    acknowledges = False

    def __init__(self, space: _Space) -> None:
        self.space = space

    def process_token(self) -> str:
        return _PROCESS

    def _current(self, key: tuple[str, str]) -> str | None:
        found = self.space.inbox.get(key)
        if found is None:
            return None
        value, expires = found
        if expires <= time.monotonic():
            del self.space.inbox[key]
            return None
        return value

    def is_done(self, handler: str, event_id: str, *, event_time: float) -> bool:
        with self.space.lock:
            return self._current((handler, event_id)) == "done"

    def claim(
        self,
        handler: str,
        event_id: str,
        task_id: str,
        *,
        event_time: float,
        lease: str,
        lease_seconds: float,
        use_inbox: bool,
    ) -> Claim:
        key = (handler, event_id)
        with self.space.lock:
            current = self._current(key) if use_inbox else None
            if current == "done":
                return Claim("done")
            if current is not None and current != lease:
                # Every holder is in this process, so alive: it is busy until its lease ends.
                ttl = self.space.inbox[key][1] - time.monotonic()
                return Claim("busy", holder=current, holder_ttl_ms=int(ttl * 1000))
            state = self.space.deliveries.setdefault(task_id, {"starts": 0, "failures": 0})
            if state.get("lease") != lease:  # the same run asking again counts one start
                state["starts"] += 1
                state["lease"] = lease
            if use_inbox:
                self.space.inbox[key] = (lease, time.monotonic() + lease_seconds)
            first = state.get("first_failed_at")
            return Claim(
                "run",
                starts=int(state["starts"]),
                failures=int(state["failures"]),
                first_failed_at=first,
            )

    def new_effects(self) -> None:
        return None

    def succeed(
        self,
        handler: str,
        event_id: str,
        task_id: str,
        *,
        event_time: float,
        lease: str,
        use_inbox: bool,
        ttl_seconds: float,
        effects: Any | None = None,
        delivery_tag: str | None = None,
    ) -> bool:
        key = (handler, event_id)
        with self.space.lock:
            if use_inbox:
                current = self._current(key)
                if current is not None and current not in (lease, "done"):
                    return False
                self.space.inbox[key] = ("done", time.monotonic() + ttl_seconds)
            self.space.deliveries.pop(task_id, None)
            return True

    def release(
        self,
        handler: str,
        event_id: str,
        task_id: str,
        *,
        lease: str,
        failed: bool,
        next_due_in: float = 0.0,
        forget: bool = False,
    ) -> int:
        key = (handler, event_id)
        with self.space.lock:
            if self._current(key) == lease:
                del self.space.inbox[key]
            if forget:
                self.space.deliveries.pop(task_id, None)
                return 0
            state = self.space.deliveries.setdefault(task_id, {"starts": 0, "failures": 0})
            state["starts"] = 0
            if failed:
                state["failures"] += 1
                state.setdefault("first_failed_at", time.time())
            return int(state["failures"])

    def forget(self, task_id: str) -> None:
        with self.space.lock:
            self.space.deliveries.pop(task_id, None)


class _DeadLetters:
    def __init__(self, space: _Space, service: str) -> None:
        self.space = space
        self.service = service

    def _records(self) -> dict[str, tuple[bytes, float]]:
        return self.space.dead.setdefault(self.service, {})

    def add(self, id: str, record: str, score: float) -> None:
        with self.space.lock:
            self._records()[id] = (record.encode(), score)

    def _ordered(self) -> list[tuple[str, float]]:
        # Newest first; equal scores by id, reversed, as Redis's ZREVRANGE orders them.
        return sorted(((i, s) for i, (_, s) in self._records().items()), key=lambda p: (p[1], p[0]), reverse=True)

    def trim(self, limit: int) -> list[str]:
        with self.space.lock:
            oldest = [i for i, _ in reversed(self._ordered())][: max(0, len(self._records()) - limit)]
            for id in oldest:
                del self._records()[id]
            return oldest

    def newest_first(self) -> list[tuple[str, float]]:
        with self.space.lock:
            return self._ordered()

    def get(self, id: str) -> tuple[bytes, float] | None:
        with self.space.lock:
            return self._records().get(id)

    def load(self, ids: Sequence[str]) -> list[bytes | None]:
        with self.space.lock:
            records = self._records()
            return [records[i][0] if i in records else None for i in ids]

    def remove(self, ids: Sequence[str]) -> None:
        with self.space.lock:
            for id in ids:
                self._records().pop(id, None)

    def count(self) -> int:
        with self.space.lock:
            return len(self._records())


class _Traces:
    """The trace records of one space, expiring as the Redis keys do."""

    def __init__(self, space: _Space) -> None:
        self.space = space

    def write(
        self, correlation_id: str, event_ids: Sequence[str], fields: dict[str, str], ttl: float
    ) -> None:
        expires = time.monotonic() + ttl
        with self.space.lock:
            group = self._group(correlation_id) or {}
            group.update(fields)
            self.space.traces[correlation_id] = (group, expires)
            for event_id in event_ids:
                self.space.trace_events[event_id] = (correlation_id, expires)

    def _group(self, correlation_id: str) -> dict[str, str] | None:
        found = self.space.traces.get(correlation_id)
        if found is None or found[1] <= time.monotonic():
            self.space.traces.pop(correlation_id, None)
            return None
        return found[0]

    def correlation_of(self, event_id: str) -> str | None:
        with self.space.lock:
            found = self.space.trace_events.get(event_id)
            if found is None or found[1] <= time.monotonic():
                self.space.trace_events.pop(event_id, None)
                return None
            return found[0]

    def load(self, correlation_id: str) -> dict[str, str]:
        with self.space.lock:
            return dict(self._group(correlation_id) or {})


class MemoryState:
    """Inboxes, dead letters and trace records of every service on one ``memory://`` space."""

    def __init__(self, space: _Space) -> None:
        self.space = space

    def inbox(self, service: str) -> _Inbox:
        return _Inbox(self.space)

    def dead_letters(self, service: str) -> _DeadLetters:
        return _DeadLetters(self.space, service)

    def dead_letter_services(self) -> list[str]:
        with self.space.lock:
            return sorted(s for s, records in self.space.dead.items() if records)

    def traces(self) -> _Traces:
        return _Traces(self.space)

    def close(self) -> None:
        """The space outlives a bus: other buses of the process share it."""


class MemoryRegistry:
    """The registry's records of one ``memory://`` space."""

    def __init__(self, space: _Space) -> None:
        self.space = space

    def write(self, service: str, record: str) -> None:
        with self.space.lock:
            self.space.records[service] = record.encode()
            self.space.version = uuid.uuid4().hex.encode()

    def remove(self, service: str) -> None:
        with self.space.lock:
            self.space.records.pop(service, None)
            self.space.version = uuid.uuid4().hex.encode()

    def version(self) -> bytes | None:
        return self.space.version

    def load(self, known: Sequence[str] = ()) -> tuple[bytes | None, dict[bytes, bytes]]:
        with self.space.lock:
            return self.space.version, {k.encode(): v for k, v in self.space.records.items()}

    def record_published(self, field: str, value: str) -> None:
        with self.space.lock:
            self.space.published[field] = value

    def migrate(self) -> list[str]:
        """Nothing to move: a memory space has one layout."""
        return []

    def published(self) -> list[str]:
        with self.space.lock:
            return list(self.space.published)

    def close(self) -> None:
        """The space outlives a bus: other buses of the process share it."""


def open_backend(
    app: Any, settings: Any, broker_url: str, name: str, state: StateStore | None = None
) -> Backend:
    """The memory backend of ``broker_url``'s space (``memory://`` or ``memory://name``);
    inboxes and dead letters in ``state`` if the bus brings a store."""
    if settings.registry_url is not None:
        raise ConfigurationError(
            "The broker is memory://, whose queues live in this process, but registry_url is"
            " set; a registry elsewhere would send other processes deliveries they can never"
            " receive. Drop registry_url, or use a redis:// broker."
        )
    space = _space(broker_url)
    return Backend(
        name="memory",
        capabilities=CAPABILITIES,
        transport=MemoryTransport(app, settings.publish_timeout),
        state=MemoryState(space) if state is None else state,
        registry=MemoryRegistry(space),
        recovery=None,
        description=f"{broker_url} (this process only)",
    )
