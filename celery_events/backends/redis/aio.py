"""The Redis fan-out for asyncio callers (``bus.apublish``): native ``redis.asyncio``.

An asyncio client belongs to the event loop it connects on: its connections are the loop's
streams, and one used from another loop fails. An app may run several loops (a thread with
its own loop, ``asyncio.run`` called more than once), so :class:`LoopClients` keeps one client
per loop, each made with the same URL and options as the bus's blocking client
(``client.connect_async``), and drops the client of a loop that was closed.

Each loop's publishes go through its :class:`ScriptPipeline`: every event is still one
``EVALSHA`` of the fan-out script (atomic on its own, as from ``publish``), but the calls of
concurrent publishes share writes and round trips, which is what lets 100 tasks publish faster
than one thread. With ``wait_for_replicas`` each call goes alone (:func:`run_script`: the same
packed ``EVALSHA`` and ``WAIT`` as the blocking ``client.run_script``), since ``WAIT`` counts
the writes of its own connection. A caller cancelled mid-command there leaves the connection
with a reply it will never read, so that connection is closed, not put back in the pool; the
script itself ran whole or not at all.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from ...errors import describe
from .client import ReplyLost, _pack

__all__ = ["LoopClients", "ScriptPipeline", "run_script"]


class LoopClients:
    """One ``redis.asyncio`` client per running event loop, all made by ``connect``.

    >>> from celery_events.backends.redis.aio import LoopClients
    >>> from celery_events.backends.redis.client import connect_async
    >>> clients = LoopClients(lambda: connect_async("redis://localhost:6379/0", 5.0))
    >>> async def ping() -> bool:
    ...     return await clients.current().ping()    # in a coroutine: this loop's client
    >>> await ping()
    True
    """

    def __init__(self, connect: Callable[[], redis.asyncio.Redis]) -> None:
        self._connect = connect
        self._clients: dict[asyncio.AbstractEventLoop, ScriptPipeline] = {}
        # Loops of several threads may ask at once.
        self._lock = threading.Lock()

    def current(self) -> redis.asyncio.Redis:
        """The running loop's client (made on first use). Call it from a coroutine."""
        return self.pipeline().client

    def pipeline(self) -> ScriptPipeline:
        """The running loop's :class:`ScriptPipeline` (made on first use)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            with self._lock:
                client = self._clients.get(loop)
                if client is None:
                    # A closed loop's client is dropped: its connections went with the loop
                    # (and the client, which holds the loop, would keep it alive).
                    for gone in [known for known in self._clients if known.is_closed()]:
                        del self._clients[gone]
                    client = self._clients[loop] = ScriptPipeline(self._connect())
        return client

    async def aclose(self) -> None:
        """Close the running loop's client, if it made one."""
        with self._lock:
            client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.client.aclose()

    def close(self) -> None:
        """Close every loop's client: on the loop itself where it still runs (scheduled, as
        this may be called from any thread), else by dropping it (its connections went with
        its loop)."""
        with self._lock:
            clients = list(self._clients.items())
            self._clients.clear()
        for loop, client in clients:
            if loop.is_closed() or not loop.is_running():
                continue
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                loop.create_task(client.client.aclose())
            else:
                asyncio.run_coroutine_threadsafe(client.client.aclose(), loop)


#: One caller's script call: the script, its encoded EVALSHA, its keys and arguments, and
#: the future its reply goes to.
_Call = tuple[Script, bytes, list[str], list[str | int | float], "asyncio.Future[Any]"]

#: Script calls written together at most (about as many deliveries' messages as fit in a
#: few hundred KB for one-subscriber events).
PIPELINE_LIMIT = 64
#: Replies handed to their callers before the pipeline lets the loop run them: each caller
#: then prepares its next publish, so a larger share would hold the loop longer.
REPLIES_PER_TURN = 4


class ScriptPipeline:
    """The script calls of one loop's concurrent callers, written together on one connection.

    Each caller's call stays one ``EVALSHA`` (one event's script, atomic on its own); what is
    shared is the write and the round trip: while one group is on the wire, the calls made
    meanwhile wait, and go out together next. Each caller gets its own reply or error: a
    refusal (``ResponseError``) is the caller's; a connection lost before a call's reply came
    is :class:`~.client.ReplyLost` for that call and every later one of the group, whose
    scripts may have run. A caller cancelled while it waits stops waiting; the pipeline still
    reads its reply, so the connection never holds one unread.

    >>> import redis
    >>> from redis.commands.core import Script
    >>> from celery_events.backends.redis.aio import LoopClients
    >>> from celery_events.backends.redis.client import connect_async
    >>> clients = LoopClients(lambda: connect_async("redis://localhost:6379/0", 5.0))
    >>> echo = Script(redis.Redis(), "return ARGV[1]")
    >>> await clients.pipeline().run(echo, [], ["hello"])
    b'hello'
    """

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self._pending: list[_Call]
        self._pending = []
        self._flushing = False
        self._connection: Any = None
        # The running flush (the loop keeps only a weak reference to a task).
        self._flusher: asyncio.Task[None] | None = None

    async def run(self, script: Script, keys: list[str], args: list[str | int | float]) -> Any:
        """Run ``script`` with ``keys`` and ``args``; return its reply (or raise its error)."""
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        # Encoded here, by each caller: the pipeline only joins what they encoded, so that
        # writing a group never holds the loop for long.
        command = _pack("EVALSHA", script.sha, len(keys), *keys, *args)
        self._pending.append((script, command, keys, args, reply))
        if not self._flushing:
            self._flushing = True
            self._flusher = loop.create_task(self._flush())
        return await reply

    async def _flush(self) -> None:
        try:
            while self._pending:
                group = self._pending[:PIPELINE_LIMIT]
                del self._pending[:PIPELINE_LIMIT]
                try:
                    await self._send(group)
                except BaseException as exc:  # whatever stopped it, no caller waits forever
                    for *_, reply in group:
                        if not reply.done():
                            reply.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
        finally:
            self._flushing = False

    async def _send(self, group: list[_Call]) -> None:
        # The pipeline keeps one connection of the pool for itself (only one flush runs at a
        # time): no pool round per group. The client's aclose disconnects it with the pool's.
        connection = self._connection
        if connection is None:
            pool = self.client.connection_pool
            connection = self._connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        while group:
            group = await self._round(connection, group)

    async def _round(
        self,
        connection: Any,
        group: list[_Call],
    ) -> list[_Call]:
        """Write ``group`` and read its replies; return the calls to write again (Redis had
        forgotten their script, now loaded)."""
        try:
            # Connected first: a Redis that cannot be reached has been sent nothing.
            await connection.connect()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            await connection.disconnect()
            for *_, reply in group:
                if not reply.done():
                    reply.set_exception(exc)
            return []
        try:
            await connection.send_packed_command(
                [
                    # A call written again after SCRIPT LOAD: the sha it was encoded with
                    # is the same (a script's sha is the hash of its text).
                    command
                    for _, command, *_ in group
                ]
            )
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            await connection.disconnect()
            # A write that failed part way may have carried whole commands before it (one
            # call alone never runs unless all of it arrived): their scripts may have run.
            error = exc if len(group) == 1 else ReplyLost(describe(exc))
            for *_, reply in group:
                if not reply.done():
                    reply.set_exception(error)
            return []
        again = []
        for index, call in enumerate(group):
            reply = call[4]
            try:
                result = await connection.read_response()
            except NoScriptError:
                again.append(call)
            except redis.ResponseError as exc:
                if not reply.done():
                    reply.set_exception(exc)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                await connection.disconnect()
                lost = ReplyLost(describe(exc))
                for *_, waiting in group[index:]:
                    if not waiting.done():
                        waiting.set_exception(lost)
                return []
            else:
                if not reply.done():
                    reply.set_result(result)
            if index % REPLIES_PER_TURN == REPLIES_PER_TURN - 1:
                # Let the callers just answered run before reading more (the loop's lag).
                await asyncio.sleep(0)
        if again:
            # A restarted or flushed Redis (or a promoted replica) forgets scripts.
            script = again[0][0]
            await connection.send_command("SCRIPT", "LOAD", script.script)
            script.sha = (await connection.read_response()).decode()
        return again


async def run_script(
    client: redis.asyncio.Redis,
    script: Script,
    keys: list[str],
    args: list[str | int | float],
    wait: tuple[int, int] | None = None,
) -> tuple[Any, Any]:
    """Run ``script`` as one packed ``EVALSHA`` on a pooled connection of ``client``, followed
    in the same write by ``WAIT replicas timeout_ms`` when ``wait`` is given; return the
    script's reply and WAIT's (``None`` without ``wait``).

    As the blocking ``client.run_script``: a Redis that forgot the script (restarted, a
    promoted replica) gets it loaded and run once more; a reply that never comes raises
    :class:`~.client.ReplyLost` (the script may have run).
    """
    pool = client.connection_pool
    connection: Any = await pool.get_connection()  # type: ignore[no-untyped-call]
    waited = [] if wait is None else [_pack("WAIT", *wait)]
    try:
        try:
            await connection.send_packed_command(
                [_pack("EVALSHA", script.sha, len(keys), *keys, *args), *waited]
            )
            return await _replies(connection, wait)
        except NoScriptError:
            await connection.send_command("SCRIPT", "LOAD", script.script)
            script.sha = (await connection.read_response()).decode()
            await connection.send_packed_command(
                [_pack("EVALSHA", script.sha, len(keys), *keys, *args), *waited]
            )
            return await _replies(connection, wait)
    except (redis.ConnectionError, redis.TimeoutError):
        await connection.disconnect()
        raise
    except asyncio.CancelledError:
        # Cancelled between the write and the reply: the reply would be read by the next
        # command on this connection, so it is closed instead of reused.
        await connection.disconnect(nowait=True)
        raise
    finally:
        await pool.release(connection)


async def _replies(connection: Any, wait: tuple[int, int] | None) -> tuple[Any, Any]:
    # The script's error is raised once WAIT's reply is read too (nothing left unread).
    try:
        reply, error = await _reply(connection), None
    except redis.ResponseError as exc:
        reply, error = None, exc
    acked = await _reply(connection) if wait is not None else None
    if error is not None:
        raise error
    return reply, acked


async def _reply(connection: Any) -> Any:
    try:
        return await connection.read_response()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ReplyLost(describe(exc)) from exc
