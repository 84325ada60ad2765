"""Redis clients with bounded waits: the one place redis-py is configured."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.exceptions import NoScriptError
from redis.retry import Retry

from .errors import describe

REDIS_SCHEMES = ("redis", "rediss", "redis+socket", "unix")


def first_broker_url(app_broker: object) -> str:
    """Return the first URL of a Celery ``broker_url`` (which may list fail-over URLs)."""
    if isinstance(app_broker, (list, tuple)):
        app_broker = app_broker[0] if app_broker else ""
    text = str(app_broker or "")
    return text.split(";")[0].strip()


def is_redis_url(url: str) -> bool:
    """Tell whether ``url`` names a plain Redis server (not Sentinel or another broker)."""
    return urlsplit(url).scheme in REDIS_SCHEMES


def connect(url: str, timeout: float, **options: Any) -> redis.Redis:
    """Open a Redis client whose every call gives up after ``timeout`` seconds.

    redis-py retries by itself with backoff by default, which would stretch a bounded publish
    into many timeouts; our callers retry on their own deadline instead.
    """
    scheme = urlsplit(url).scheme
    if scheme == "redis+socket":
        # kombu spells unix sockets redis+socket:///path; redis-py spells them unix:///path.
        url = "unix" + url[len("redis+socket") :]
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=30,
        **options,
    )


def _pack(*args: str | int | float) -> bytes:
    """Encode one Redis command (RESP) into a single buffer, so it leaves in one send."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else repr(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def run_script(
    client: redis.Redis, script: Script, keys: list[str], args: list[str | int | float]
) -> Any:
    """Run ``script`` as one packed ``EVALSHA`` on a pooled connection; return its reply.

    redis-py's generic command path (hooks, observability, retry wrappers) costs more than the
    round trip itself on the hot paths that use this (the fan-out, the inbox).
    """
    pool = client.connection_pool
    connection: Any = pool.get_connection()
    try:
        try:
            connection.send_packed_command(
                [_pack("EVALSHA", script.sha, len(keys), *keys, *args)]
            )
            return _reply(connection)
        except NoScriptError:
            # A restarted or flushed Redis forgets scripts; load it and run it once more.
            connection.send_command("SCRIPT", "LOAD", script.script)
            script.sha = connection.read_response().decode()
            connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
            return _reply(connection)
    except (redis.ConnectionError, redis.TimeoutError):
        connection.disconnect()
        raise
    finally:
        pool.release(connection)


class ReplyLost(redis.ConnectionError):
    """A command was sent whole but its reply never came: Redis may or may not have run it."""


def _reply(connection: Any) -> Any:
    try:
        return connection.read_response()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ReplyLost(describe(exc)) from exc
