"""The registry's records in a RabbitMQ stream, so that a fleet needs no Redis to route.

Why a stream
------------
The registry needs a store that many processes read at once without taking anything from each
other, that survives a broker restart, and that survives the death of a node of a cluster.
A RabbitMQ stream (a queue declared with ``x-queue-type: stream``) is exactly that: an
append-only log, always durable, replicated over the cluster's nodes (a majority must confirm
each write, so a three-node cluster keeps it when one node dies), and read non-destructively
over AMQP 0-9-1 by any number of consumers, each from an offset of its own
(``x-stream-offset``; a stream consumer must set a prefetch with ``basic.qos`` and ack).
A stream declared without ``x-initial-cluster-size`` has a replica on every node of the
cluster (``rabbit_stream_queue:initial_cluster_size/1``); measured on three nodes: with the
stream's leader killed, a new store read every record and the next write took 0.12 s.

Rejected: a classic or quorum queue per service holding its last record (``x-max-length: 1``):
reading one takes its message (``basic.get``), so two readers at once would each see the other's
read as an empty queue, and on quorum queues every requeue counts toward the delivery limit.
Queue arguments and bindings cannot be read back over AMQP at all (only through the management
plugin, which this store must not need).

How it is read
--------------
The stream holds one message per change, with a ``kind`` header: ``record`` (a service's whole
record, the body), ``removed`` (a tombstone), ``published`` (a catalog field), ``snapshot``
(every record and catalog field, as of an offset it names) or ``hello`` (the first message, so
that the stream is never empty). Replayed in order, the last message for a service wins.

Each store keeps one connection with a consumer on the stream. A new store first finds the
stream's last chunk (a short-lived consumer at offset ``last``: AMQP 0-9-1 has no "end of
stream" marker), whose first message names the newest snapshot its writer knew of; it reads
from just after what that snapshot covers (the changes written while it was made, then the
snapshot, then the rest) and waits until it has read that last chunk. From then on the
consumer follows the stream live: :meth:`AmqpRegistry.version` applies what the broker pushed
since (without waiting) and returns the offset of the last message applied, so a change is
seen at the registry's next check, ``registry_refresh_interval`` after it reached the broker;
:meth:`AmqpRegistry.load` returns the records it holds, with no round trip. A write returns
once the broker confirmed it (a majority of the stream's replicas have it) and the store's
own consumer has read it back, so a process reads its own writes.

A lost connection is made again (the next node of a broker URL list first; a node that just
restarted refuses the stream for a moment, so it retries within ``timeout``) and the consumer
resumes after the last offset applied; a forked child keeps the records it inherited and
resumes from there on a connection of its own. A peer that vanishes without closing the socket
is noticed by AMQP heartbeats (``HEARTBEAT``), within two of them.

Bounded: a writer adds a snapshot once ``SNAPSHOT_EVERY`` messages (or twice as many as there
are records) follow the last one, so a new store reads one snapshot and at most that many
messages, however long the fleet has run; and the stream keeps ``MAX_LENGTH_BYTES`` (256 MB,
in 8 MB segments; retention drops whole old segments), far more than the newest snapshot and
what follows it. A store that finds its start dropped (it was away while the stream rolled
over) reads again from the newest snapshot.

What it costs (measured, one local node, 50 services of 3 subscriptions): ``version()`` and
``load()`` 0.015 ms (p50: no round trip, the consumer was pushed the changes); a write 1 ms;
a change is in another process's store about 2 ms after it was written; a new store's first
``load()`` (connect, declare, find the end, replay) 31 ms, and 44 ms after 2,050 writes (the
snapshots: replaying all 2,050 took 410 ms).
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from ...errors import describe
from ..base import StoreError

__all__ = ["AmqpRegistry", "stream_name"]

#: Messages the broker may push before the store acks (a stream consumer needs a prefetch).
PREFETCH = 500
#: How long a store waits for the last chunk before it takes the stream for empty.
_EMPTY_WAIT = 0.5
#: Seconds between heartbeats the connection asks for; a dead peer is noticed within two.
HEARTBEAT = 10
#: Messages between two snapshots of every record (at least; see ``_snapshot_due``).
SNAPSHOT_EVERY = 200
#: Retention: a stream larger than this drops its oldest segments.
MAX_LENGTH_BYTES = 256 * 1024 * 1024
SEGMENT_BYTES = 8 * 1024 * 1024


def stream_name(key_prefix: str) -> str:
    """The registry stream of a bus with ``key_prefix`` (``celery_events:`` ->
    ``celery_events.registry``)."""
    return f"{key_prefix.rstrip(':.') or 'celery_events'}.registry"


class AmqpRegistry:
    """The registry store on a RabbitMQ stream (see the module's docstring).

    ``url`` is a broker URL (a ``;``-separated list fails over, as Celery's does); ``ssl`` is
    the app's ``broker_use_ssl``. Thread-safe; each process (a fork included) has its own
    connection.

    >>> from celery_events.backends.amqp.registry import AmqpRegistry
    >>> store = AmqpRegistry("amqp://guest:guest@localhost//")
    >>> store.write("orders", '{"registered_at": 1, "subscriptions": []}')
    >>> store.load()[1]
    {b'orders': b'{"registered_at": 1, "subscriptions": []}'}
    """

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "celery_events:",
        timeout: float = 5.0,
        ssl: Any = None,
        transport_options: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.stream = stream_name(key_prefix)
        self.timeout = timeout
        self.ssl = ssl
        self.transport_options = dict(transport_options or {})
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._connection: Any = None
        self._channel: Any = None
        self._publisher: Any = None
        self._tag = ""
        self._reset_state()
        # A fork while another thread holds the lock would leave the child's copy held.
        own = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _renew_lock(own))

    @classmethod
    def from_app(cls, app: Any, *, key_prefix: str, timeout: float) -> AmqpRegistry:
        """The store on ``app``'s broker, with the TLS and transport options its kombu uses."""
        url = app.conf.broker_url
        if isinstance(url, (list, tuple)):
            url = ";".join(url)
        return cls(
            str(url or "amqp://guest@localhost//"),
            key_prefix=key_prefix,
            timeout=timeout,
            ssl=app.conf.broker_use_ssl,
            transport_options=app.conf.broker_transport_options,
        )

    def _reset_state(self) -> None:
        self._records: dict[bytes, bytes] = {}
        self._published: dict[str, str] = {}
        # Ids of the messages applied while a write waits for its own, else None.
        self._read_ids: set[str] | None = None
        # The offset of the last message applied; -1 before the first.
        self._applied = -1
        # The offset the consumer asked to start from.
        self._start = 0
        # Whether the records are all there: the stream was read from its very first message,
        # or from a snapshot on; else messages are kept (``_pending``) until a snapshot comes.
        self._complete = True
        self._pending: list[tuple[int, str, str, bytes]] = []
        # The last offset the newest snapshot known here covers; -1: none.
        self._snapshot_upto = -1

    # -- the RegistryStore role ------------------------------------------------------------

    def write(self, service: str, record: str) -> None:
        self._append("record", record.encode(), service=service)

    def remove(self, service: str) -> None:
        self._append("removed", b"", service=service)

    def version(self) -> bytes | None:
        with self._lock:
            self._run(self._read_pushed)
            return None if self._applied < 0 else str(self._applied).encode()

    def load(self, known: Sequence[str] = ()) -> tuple[bytes | None, dict[bytes, bytes]]:
        with self._lock:
            self._run(self._read_pushed)
            version = None if self._applied < 0 else str(self._applied).encode()
            return version, dict(self._records)

    def record_published(self, field: str, value: str) -> None:
        with self._lock:
            self._run(self._read_pushed)
            # The catalog says who publishes what, not when last: a field already in the
            # stream is not written again, so the log grows once per (service, name).
            if field in self._published:
                return
            self._append("published", value.encode(), field=field)

    def published(self) -> list[str]:
        with self._lock:
            self._run(self._read_pushed)
            return list(self._published)

    def migrate(self) -> list[str]:
        """Nothing to move: the stream has one layout."""
        return []

    def close(self) -> None:
        with self._lock:
            self._drop_connection(close=os.getpid() == self._pid)

    # -- connection ------------------------------------------------------------------------

    def _run(self, step: Any) -> Any:
        """Run ``step`` on a caught-up connection, making it again once if it was lost."""
        if os.getpid() != self._pid:
            # A forked child shares its parent's socket: never read from it.
            self._drop_connection(close=False)
            self._pid = os.getpid()
        # A node that just restarted refuses the stream for a moment ("home node down"), a
        # cluster moves its leader: try again, on a new connection, until the timeout.
        deadline = time.monotonic() + self.timeout
        pause = 0.05
        while True:
            try:
                self._connect()
                return step()
            except StoreError:
                self._drop_connection(close=True)
                raise
            except Exception as exc:  # py-amqp and kombu raise OSError, AMQPError and more
                self._drop_connection(close=True)
                if not _recoverable(exc) or time.monotonic() + pause > deadline:
                    raise StoreError(
                        f"the registry stream {self.stream!r} on RabbitMQ could not be read or"
                        f" written: {describe(exc)}",
                        _fix(exc),
                    ) from exc
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

    def _connect(self) -> None:
        if self._connection is not None:
            self._connection.heartbeat_check()
            return

        connection = _kombu_connection()(
            self.url,
            connect_timeout=self.timeout,
            heartbeat=HEARTBEAT,
            ssl=self.ssl,
            transport_options=self.transport_options,
        )
        try:
            connection.ensure_connection(max_retries=len(connection.alt) or 1, timeout=self.timeout)
            raw = connection.connection
            created = self._declare(raw)
            channel = raw.channel()
            publisher = raw.channel()
            publisher.confirm_select()
        except BaseException:
            connection.release()
            raise
        self._connection, self._channel, self._publisher = connection, channel, publisher
        if created:
            # A stream that did not exist is empty: the first message makes it non-empty, so
            # that every reader can find its end (two stores making it at once write two).
            self._publish("hello", b"")
        tail = self._last_chunk(raw, wait=_EMPTY_WAIT)
        if tail is None:
            # Made empty by someone else (or its hello is not readable yet).
            self._publish("hello", b"")
            tail = self._last_chunk(raw, wait=self.timeout)
            if tail is None:
                raise StoreError(
                    f"the registry stream {self.stream!r} on RabbitMQ returned nothing, not even"
                    " the message this process wrote to it",
                    None,
                )
        last, snapshot_upto = tail
        if self._applied >= 0 and self._first_offset(raw) > self._applied + 1:
            # Retention dropped messages this store had not read while it was away.
            self._reset_state()
        if self._applied >= 0:
            # A new connection resumes after the last message applied.
            self._subscribe(self._applied + 1)
        else:
            # The first one starts where the newest snapshot the last writer knew of needs
            # it to (the messages it does not cover, then it), or at the very beginning.
            self._start = snapshot_upto + 1
            self._complete = self._start == 0
            self._subscribe(self._start)
        self._wait_for(last)
        if not self._complete and self._start != 0:
            # No snapshot where the hint said: read it all, as a store without the hint would.
            channel.basic_cancel(self._tag)
            self._reset_state()
            self._subscribe(0)
            self._wait_for(last)
        if not self._complete:
            raise StoreError(
                f"the registry stream {self.stream!r} on RabbitMQ lost its oldest records (the"
                " stream was truncated and holds no snapshot); every service must register"
                " again (restart its workers)",
                None,
            )

    def _subscribe(self, start: int) -> None:
        self._channel.basic_qos(0, PREFETCH, False)
        self._tag = self._channel.basic_consume(
            self.stream,
            callback=self._on_message,
            no_ack=False,
            arguments={"x-stream-offset": start},
        )

    def _declare(self, raw: Any) -> bool:
        """Declare the stream; True when it did not exist before (a passive check says)."""
        import amqp

        check = raw.channel()
        try:
            check.queue_declare(self.stream, passive=True)
        except amqp.exceptions.NotFound:
            # The broker closed that channel with the error; the declare needs a new one.
            pass
        else:
            check.close()
            return False
        declaring = raw.channel()
        declaring.queue_declare(
            self.stream,
            durable=True,
            exclusive=False,
            auto_delete=False,
            arguments={
                "x-queue-type": "stream",
                # Old segments go once the stream is past this size; the snapshots keep
                # every live record in the newest part (see _snapshot_due).
                "x-max-length-bytes": MAX_LENGTH_BYTES,
                "x-stream-max-segment-size-bytes": SEGMENT_BYTES,
            },
        )
        declaring.close()
        return True

    def _last_chunk(self, raw: Any, wait: float) -> tuple[int, int] | None:
        """The offset of the first message of the stream's last chunk and the newest snapshot
        its writer knew of, or None if the stream is empty.

        A consumer at offset ``last`` is sent that chunk first; its first message is enough.
        """
        probe = raw.channel()
        found: list[tuple[int, int]] = []
        try:
            probe.basic_qos(0, 1, False)
            tag = probe.basic_consume(
                self.stream,
                callback=lambda message: found.append(
                    (_offset(message), _int((message.headers or {}).get("snapshot"), -1))
                ),
                no_ack=False,
                arguments={"x-stream-offset": "last"},
            )
            _drain_until(raw, lambda: bool(found), wait)
            probe.basic_cancel(tag)
        finally:
            probe.close()
        return found[0] if found else None

    def _first_offset(self, raw: Any) -> int:
        """The offset of the oldest message the stream still holds."""
        probe = raw.channel()
        found: list[int] = []
        try:
            probe.basic_qos(0, 1, False)
            probe.basic_consume(
                self.stream,
                callback=lambda message: found.append(_offset(message)),
                no_ack=False,
                arguments={"x-stream-offset": "first"},
            )
            _drain_until(raw, lambda: bool(found), self.timeout)
        finally:
            probe.close()
        if not found:
            raise StoreError(
                f"the registry stream {self.stream!r} on RabbitMQ sent none of its messages"
                f" within {self.timeout} s",
                None,
            )
        return found[0]

    def _wait_for(self, offset: int) -> None:
        if not _drain_until(
            self._connection.connection, lambda: self._applied >= offset, self.timeout
        ):
            raise StoreError(
                f"the registry stream {self.stream!r} on RabbitMQ did not send its records"
                f" up to offset {offset} within {self.timeout} s (got to {self._applied})",
                None,
            )
        self._read_pushed()

    def _read_pushed(self) -> None:
        """Apply whatever the broker has pushed already, without waiting for more."""
        raw = self._connection.connection
        while True:
            try:
                raw.drain_events(timeout=0)
            except TimeoutError:
                return

    def _drop_connection(self, *, close: bool) -> None:
        connection, self._connection = self._connection, None
        self._channel = self._publisher = None
        if connection is not None and close:
            try:
                connection.release()
            except Exception:  # already broken: nothing more to release
                pass

    # -- messages --------------------------------------------------------------------------

    def _append(self, kind: str, body: bytes, **headers: str) -> None:
        with self._lock:
            self._run(lambda: self._publish(kind, body, read_back=True, **headers))
            if self._snapshot_due():
                try:
                    self._run(self._snapshot)
                except StoreError:
                    # The change is written; the next write tries the snapshot again.
                    pass

    def _snapshot_due(self) -> bool:
        """Whether enough was written since the newest snapshot to write another.

        Every ``SNAPSHOT_EVERY`` messages (more when the records are many, so that a snapshot
        costs at most about as much as the messages since the last one), so a new store reads
        one snapshot and fewer messages than that, and the live records are always in the
        stream's newest part, which retention never drops.
        """
        since = self._applied - self._snapshot_upto
        return self._complete and since >= max(SNAPSHOT_EVERY, 2 * len(self._records))

    def _snapshot(self) -> None:
        body = json.dumps(
            {
                "upto": self._applied,
                "records": {
                    k.decode("utf-8", "replace"): base64.b64encode(v).decode()
                    for k, v in self._records.items()
                },
                "published": self._published,
            }
        ).encode()
        self._publish("snapshot", body, read_back=True)

    def _publish(self, kind: str, body: bytes, *, read_back: bool = False, **headers: str) -> None:
        """Append one message; with ``read_back``, return once the consumer has applied it, so
        that a process reads its own writes."""
        import amqp

        id = uuid.uuid4().hex
        message = amqp.Message(
            body,
            content_type="application/json",
            delivery_mode=2,
            # ``snapshot``: where a new store starts reading (after the newest snapshot's).
            application_headers={
                "kind": kind, "id": id, "snapshot": self._snapshot_upto, **headers
            },
        )
        # The consumer may be sent it while the publish waits for its confirm.
        self._read_ids = set()
        try:
            # Confirmed: when this returns, a majority of the stream's replicas hold the change.
            self._publisher.basic_publish(
                message, exchange="", routing_key=self.stream, confirm_timeout=self.timeout
            )
            if read_back and not _drain_until(
                self._connection.connection,
                lambda: self._read_ids is not None and id in self._read_ids,
                self.timeout,
            ):
                raise StoreError(
                    f"the registry stream {self.stream!r} on RabbitMQ took the change but"
                    f" did not send it back within {self.timeout} s",
                    None,
                )
        finally:
            self._read_ids = None

    def _on_message(self, message: Any) -> None:
        offset = _offset(message)
        if offset > self._applied:
            if self._applied < 0 and self._start == 0 and offset != 0:
                # The stream's first message is gone (retention dropped it): records may be
                # missing until a snapshot comes. (Offsets are not consecutive otherwise: the
                # broker's own entries at each segment's start take some.)
                self._complete = False
            headers = message.headers or {}
            kind = _text(headers.get("kind"))
            body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
            key = _text(headers.get("field" if kind == "published" else "service"))
            if kind == "snapshot":
                self._apply_snapshot(body)
            else:
                self._apply(kind, key, body)
                if not self._complete:
                    self._pending.append((offset, kind, key, body))
            self._snapshot_upto = max(self._snapshot_upto, _int(headers.get("snapshot"), -1))
            self._applied = offset
            if self._read_ids is not None:
                self._read_ids.add(_text(headers.get("id")))
        message.channel.basic_ack(message.delivery_tag)

    def _apply(self, kind: str, key: str, body: bytes) -> None:
        if kind == "record":
            self._records[key.encode()] = body
        elif kind == "removed":
            self._records.pop(key.encode(), None)
        elif kind == "published":
            self._published[key] = body.decode("utf-8", "replace")
        # Anything else (``hello``, kinds a later version writes) changes no record.

    def _apply_snapshot(self, body: bytes) -> None:
        try:
            snapshot = json.loads(body)
            upto = int(snapshot["upto"])
            records = {
                k.encode(): base64.b64decode(v) for k, v in dict(snapshot["records"]).items()
            }
            published = {str(k): str(v) for k, v in dict(snapshot["published"]).items()}
        except (ValueError, KeyError, TypeError):
            return  # not one this version can read: the messages around it still count
        self._snapshot_upto = max(self._snapshot_upto, upto)
        if self._complete:
            return  # the records here already hold all it says, and what came after it
        # It holds every change up to ``upto``; those after it (written while it was made)
        # were kept as they came.
        self._records, self._published = records, published
        for offset, kind, key, value in self._pending:
            if offset > upto:
                self._apply(kind, key, value)
        self._pending = []
        self._complete = True


def _int(value: object, default: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str, bytes)):
        return default
    try:
        return int(value)
    except ValueError:
        return default


def _renew_lock(own: weakref.ref[AmqpRegistry]) -> None:
    store = own()
    if store is not None:
        store._lock = threading.RLock()


def _offset(message: Any) -> int:
    return int((message.headers or {}).get("x-stream-offset", -1))


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


def _recoverable(exc: BaseException) -> bool:
    """Whether a new connection may fix it (lost sockets, a node going down)."""
    import amqp

    if isinstance(exc, amqp.exceptions.AccessRefused):
        return False
    return isinstance(exc, (OSError, amqp.exceptions.ConnectionError, amqp.exceptions.ChannelError))


def _fix(exc: BaseException) -> str | None:
    import amqp

    if isinstance(exc, amqp.exceptions.AccessRefused):
        return (
            "The broker user may not use the registry stream: grant it configure, write and"
            " read rights on the queue named by the bus's key_prefix (rabbitmqctl"
            " set_permissions), or pass registry_url to keep the registry in Redis."
        )
    if isinstance(exc, amqp.exceptions.PreconditionFailed):
        return (
            "A queue of that name exists and is not a stream: delete it, or choose another"
            " key_prefix."
        )
    return "Check that RabbitMQ is reachable at the broker URL."


def _kombu_connection() -> Any:
    """kombu's Connection class (kombu's API is untyped; imported when first needed)."""
    from kombu.connection import Connection

    return Connection


def _drain_until(connection: Any, done: Callable[[], bool], timeout: float) -> bool:
    """Handle ``connection``'s incoming frames (its consumers' callbacks) until ``done()`` or
    ``timeout`` seconds have passed; whether ``done()`` came true."""
    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            connection.drain_events(timeout=min(left, 0.1))
        except TimeoutError:
            pass
    return True
