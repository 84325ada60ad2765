"""The Redis fan-out for asyncio callers (``bus.apublish``): native ``redis.asyncio``.

An asyncio client belongs to the event loop it connects on: its connections are the loop's
streams, and one used from another loop fails. An app may run several loops (a thread with
its own loop, ``asyncio.run`` called more than once), so :class:`LoopClients` keeps one client
per loop, each made with the same URL and options as the bus's blocking client
(``client.connect_async``), and forgets a loop's client when the loop is gone.

:func:`run_script` sends the same packed ``EVALSHA`` (and ``WAIT``) as the blocking
``client.run_script`` in one write and reads the replies without blocking the loop. A caller
cancelled mid-command leaves the connection with a reply it will never read, so that
connection is closed, not put back in the pool; the script itself ran whole or not at all.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from ...errors import describe
from .client import ReplyLost, _pack

__all__ = ["LoopClients", "run_script"]

log = logging.getLogger(__name__)


class LoopClients:
    """One ``redis.asyncio`` client per running event loop, all made by ``connect``.

    >>> clients = LoopClients(lambda: connect_async(url, 5.0))     # doctest: +SKIP
    >>> client = clients.current()        # inside a coroutine: this loop's client
    """

    def __init__(self, connect: Callable[[], redis.asyncio.Redis]) -> None:
        self._connect = connect
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis]
        self._clients = weakref.WeakKeyDictionary()
        # Loops of several threads may ask at once.
        self._lock = threading.Lock()

    def current(self) -> redis.asyncio.Redis:
        """The running loop's client (made on first use). Call it from a coroutine."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            with self._lock:
                client = self._clients.get(loop)
                if client is None:
                    client = self._clients[loop] = self._connect()
        return client

    async def aclose(self) -> None:
        """Close the running loop's client, if it made one."""
        with self._lock:
            client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

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
                loop.create_task(client.aclose())
            else:
                asyncio.run_coroutine_threadsafe(client.aclose(), loop)


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
