"""Redis clients with bounded waits: the one place redis-py is configured.

A URL names either one Redis server (``redis://``, ``rediss://``, ``unix://``,
``redis+socket://``) or a Sentinel-watched primary (``sentinel://``, kombu's form: one
``sentinel://host:port`` per sentinel, joined by ``;``). A Sentinel client asks the sentinels
where the primary is whenever it connects, so every role on it follows a failover: a
connection to a primary that died or was demoted fails once, and the next one goes to the
promoted replica.
"""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.exceptions import NoScriptError
from redis.retry import Retry

from ...errors import ConfigurationError, describe
from .. import without_password
from ..base import StoreError, StoreUnavailable

log = logging.getLogger(__name__)

REDIS_SCHEMES = ("redis", "rediss", "redis+socket", "unix")
SENTINEL_SCHEME = "sentinel"
#: kombu's default sentinel port, for a ``sentinel://host`` without one.
SENTINEL_PORT = 26379
#: The transport options of kombu's Sentinel channel that say how to reach the primary.
SENTINEL_OPTIONS = ("master_name", "sentinel_kwargs", "min_other_sentinels")


def is_redis_url(url: str) -> bool:
    """Tell whether ``url`` names a plain Redis server (not Sentinel or another broker)."""
    return urlsplit(url).scheme in REDIS_SCHEMES


def is_sentinel_url(url: str) -> bool:
    """Tell whether ``url`` names a Redis primary through its sentinels (``sentinel://``)."""
    return urlsplit(url.split(";")[0].strip()).scheme == SENTINEL_SCHEME


# Every spelling kombu's URL parser and Celery's Redis backend accept for ssl_cert_reqs.
_CERT_REQS = {
    "CERT_REQUIRED": ssl.CERT_REQUIRED,
    "required": ssl.CERT_REQUIRED,
    "CERT_OPTIONAL": ssl.CERT_OPTIONAL,
    "optional": ssl.CERT_OPTIONAL,
    "CERT_NONE": ssl.CERT_NONE,
    "none": ssl.CERT_NONE,
}


def tls_options(url: str, use_ssl: object = None) -> dict[str, Any] | None:
    """The TLS options kombu's Redis transport connects with for ``url``; None: no TLS.

    ``use_ssl`` is the app's ``broker_use_ssl`` (for the broker's own URL; None for another
    URL). As kombu does: ``ssl_*`` options in the URL's query replace ``broker_use_ssl``
    whole, on ``redis://`` as on ``rediss://``; a ``broker_use_ssl`` dict turns TLS on even
    for a ``redis://`` URL; ``rediss://`` with neither does not verify the server's
    certificate (kombu logs that it defaults to insecure TLS). ``broker_use_ssl=True``, which
    kombu's Redis transport does not read, means TLS with redis-py's defaults (the server's
    certificate verified against the system's CAs). ``ssl_cert_reqs`` may be spelled
    ``CERT_REQUIRED``/``required``, ``CERT_OPTIONAL``/``optional``, ``CERT_NONE``/``none``
    or be an :mod:`ssl` constant.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return None
    from_url = {k: v for k, v in parse_qsl(parts.query) if k.startswith("ssl_")}
    options: dict[str, Any]
    if from_url:
        options = dict(from_url)
        if "ssl_check_hostname" in options:
            options["ssl_check_hostname"] = options["ssl_check_hostname"].lower() != "false"
    elif isinstance(use_ssl, Mapping) and use_ssl:
        options = dict(use_ssl)
    elif use_ssl is True:
        options = {}
    elif parts.scheme == "rediss":
        log.warning(
            "celery-events: %s has no ssl_cert_reqs, so the server's certificate is not"
            " verified (as kombu does); add ?ssl_cert_reqs=required&ssl_ca_certs=... or set"
            " broker_use_ssl",
            without_password(url),
        )
        options = {"ssl_cert_reqs": ssl.CERT_NONE}
    else:
        return None
    if "ssl_cert_reqs" in options:
        options["ssl_cert_reqs"] = _cert_reqs(options["ssl_cert_reqs"])
    return options


def _cert_reqs(value: object) -> ssl.VerifyMode:
    if isinstance(value, str) and value in _CERT_REQS:
        return _CERT_REQS[value]
    if isinstance(value, int) and value in (ssl.CERT_REQUIRED, ssl.CERT_OPTIONAL, ssl.CERT_NONE):
        return ssl.VerifyMode(value)
    raise ConfigurationError(
        f"ssl_cert_reqs is {value!r}; use one of {', '.join(_CERT_REQS)} (in the URL or in"
        " broker_use_ssl), or an ssl.CERT_* constant."
    )


@dataclass(frozen=True)
class _Flavour:
    """redis-py's blocking or asyncio classes: one client is made from the same options as
    the other."""

    redis_class: Any
    retry_class: Any
    sentinel_class: Any
    pool_class: Any
    sentinel_pool_class: Any


class _BlockingSentinelPool(
    redis.sentinel.SentinelConnectionPool, redis.BlockingConnectionPool
):
    """The pool of a Sentinel-watched primary that waits for a free connection, as
    ``BlockingConnectionPool`` does (see :func:`_client`); connections to a primary that is
    no longer the one the sentinels name are still dropped when released."""


class _AsyncBlockingSentinelPool(
    redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool
):
    """:class:`_BlockingSentinelPool` for ``redis.asyncio``."""


_BLOCKING = _Flavour(
    redis.Redis,
    Retry,
    redis.sentinel.Sentinel,
    redis.BlockingConnectionPool,
    _BlockingSentinelPool,
)
_ASYNCIO = _Flavour(
    redis.asyncio.Redis,
    AsyncRetry,
    redis.asyncio.sentinel.Sentinel,
    redis.asyncio.BlockingConnectionPool,
    _AsyncBlockingSentinelPool,
)


def connect(
    url: str,
    timeout: float,
    *,
    use_ssl: object = None,
    transport_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> redis.Redis:
    """Open a Redis client whose every call gives up after ``timeout`` seconds.

    TLS is set up as kombu sets it up for the same URL and ``use_ssl`` (the app's
    ``broker_use_ssl``, for the broker's URL): see :func:`tls_options`. A ``sentinel://`` URL
    gives a client of the primary its sentinels name (:func:`connect_sentinel`), with
    ``transport_options`` as kombu's Sentinel channel reads them (``master_name``,
    ``sentinel_kwargs``, ``min_other_sentinels``).

    redis-py retries by itself with backoff by default, which would stretch a bounded publish
    into many timeouts; our callers retry on their own deadline instead.
    """
    client: redis.Redis = _connect(_BLOCKING, url, timeout, use_ssl, transport_options, options)
    return client


def connect_async(
    url: str,
    timeout: float,
    *,
    use_ssl: object = None,
    transport_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> redis.asyncio.Redis:
    """The ``redis.asyncio`` client :func:`connect` would make for the same arguments: the
    same TLS, user, database, Sentinel primary and timeouts. Like any asyncio client it
    belongs to the event loop it first connects on."""
    client: redis.asyncio.Redis = _connect(
        _ASYNCIO, url, timeout, use_ssl, transport_options, options
    )
    return client


@functools.cache
def _driver_options() -> dict[str, Any]:
    """What every connection of our clients tells Redis of its library (CLIENT SETINFO),
    read once: redis-py >= 8 reads its installed version from the package metadata for every
    new connection it makes (about 0.6 ms, on the event loop for an asyncio client); older
    versions read it once at import and take no such option."""
    try:
        from redis.driver_info import DriverInfo
    except ImportError:
        return {}
    return {"driver_info": DriverInfo()}


def _connect(
    flavour: _Flavour,
    url: str,
    timeout: float,
    use_ssl: object,
    transport_options: Mapping[str, Any] | None,
    options: dict[str, Any],
) -> Any:
    if is_sentinel_url(url):
        return _connect_sentinel(flavour, url, timeout, use_ssl, transport_options, options)
    scheme = urlsplit(url).scheme
    if scheme == "redis+socket":
        # kombu spells unix sockets redis+socket:///path; redis-py spells them unix:///path.
        url = "unix" + url[len("redis+socket") :]
    tls = tls_options(url, use_ssl)
    if tls is not None:
        # redis-py's own URL parser refuses kombu's spellings (ssl_cert_reqs=CERT_REQUIRED),
        # so the TLS options leave the URL and are passed as they were read.
        parts = urlsplit(url)
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if not k.startswith("ssl_")])
        url = urlunsplit(parts._replace(scheme="rediss", query=query))
        options = {**tls, **options}
    options = {**_driver_options(), **options}
    try:
        return _client(flavour, url, timeout, options)
    except ValueError as exc:
        # A malformed URL (a port that is not a number, an unknown scheme) is a setting to fix,
        # not a broker to retry. The message leaves the URL out: it may hold a password.
        raise ConfigurationError(
            f"The Redis URL with scheme {scheme!r} cannot be used: {describe(exc)}. Fix the"
            " broker_url or registry_url, such as redis://host:6379/0."
        ) from exc


#: The connections one client keeps at most (redis-py's own bound since 8.0).
MAX_CONNECTIONS = 100


def _client(flavour: _Flavour, url: str, timeout: float, options: dict[str, Any]) -> Any:
    """A client whose pool makes a caller wait for a free connection (up to ``timeout``)
    once :data:`MAX_CONNECTIONS` are in use: redis-py's own pool raises "Too many
    connections" at once instead, which more threads (a threaded web server) or coroutines
    publishing through one bus than that would meet as a failed publish."""
    pool = flavour.pool_class.from_url(
        url,
        **{
            "max_connections": MAX_CONNECTIONS,
            "timeout": timeout,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": flavour.retry_class(NoBackoff(), 0),
            "retry_on_timeout": False,
            "health_check_interval": 30,
            **options,
        },
    )
    client = flavour.redis_class(connection_pool=pool)
    # Closing the client closes its pool, as for a client made by from_url.
    client.auto_close_connection_pool = True
    return client


def connect_sentinel(
    url: str,
    timeout: float,
    *,
    use_ssl: object = None,
    transport_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> redis.Redis:
    """A client of the Redis primary that the sentinels of ``url`` name, as kombu's Sentinel
    transport connects to it.

    ``url`` is kombu's form, ``sentinel://[user:password@]host:port[/db];sentinel://host:port``:
    every part names one sentinel; the password, user and database of the first part are the
    primary's (kombu reads them there too). The primary's name is the ``master_name``
    transport option, or ``?master_name=...`` in the URL (for a ``registry_url``, which has no
    transport options). ``sentinel_kwargs`` are the options of the connections to the sentinels
    themselves (their password, TLS), as in kombu; without them those connections get the same
    timeouts and nothing else. TLS to the primary is ``use_ssl`` (the app's ``broker_use_ssl``)
    or ``ssl_*`` options in the URL's query, read as for ``redis://``.
    """
    client: redis.Redis = _connect_sentinel(
        _BLOCKING, url, timeout, use_ssl, transport_options, options
    )
    return client


def _connect_sentinel(
    flavour: _Flavour,
    url: str,
    timeout: float,
    use_ssl: object,
    transport_options: Mapping[str, Any] | None,
    options: dict[str, Any],
) -> Any:
    parts = [urlsplit(piece.strip()) for piece in url.split(";") if piece.strip()]
    first = parts[0]
    query: dict[str, str] = {}
    for part in parts:
        if part.scheme != SENTINEL_SCHEME:
            raise ConfigurationError(
                f"The Sentinel URL {without_password(url)!r} mixes schemes ({part.scheme!r});"
                " list every sentinel as sentinel://host:port, joined by ';'."
            )
        query.update(parse_qsl(part.query))
    given = dict(transport_options or {})
    master_name = given.get("master_name") or query.pop("master_name", None)
    query.pop("master_name", None)
    if not master_name or not isinstance(master_name, str):
        raise ConfigurationError(
            f"The Sentinel URL {without_password(url)!r} names no primary: set"
            " broker_transport_options={'master_name': 'mymaster'} for the broker (as kombu"
            " needs), or add ?master_name=mymaster to a registry_url."
        )
    try:
        sentinels = [(p.hostname or "127.0.0.1", p.port or SENTINEL_PORT) for p in parts]
        db = int((first.path or "/0").strip("/") or 0)
    except ValueError as exc:
        raise ConfigurationError(
            f"The Sentinel URL {without_password(url)!r} cannot be used: {describe(exc)}. Write"
            " it as sentinel://host:26379/0;sentinel://host:26380 (a port and a database"
            " number)."
        ) from exc
    bounded: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": flavour.retry_class(NoBackoff(), 0),
    }
    primary: dict[str, Any] = {
        **bounded,
        **_driver_options(),
        "db": db,
        "retry_on_timeout": False,
        "health_check_interval": 30,
    }
    if first.password is not None:
        primary["password"] = first.password
    if first.username:
        primary["username"] = first.username
    # The primary's TLS options: the URL's ssl_* options or broker_use_ssl, read as kombu
    # reads them for redis:// (so with neither, no TLS).
    ssl_query = urlencode([(k, v) for k, v in query.items() if k.startswith("ssl_")])
    tls = tls_options(urlunsplit(("redis", "primary", "/", ssl_query, "")), use_ssl)
    if tls is not None:
        primary.update(tls, ssl=True)
    sentinel_kwargs = given.get("sentinel_kwargs")
    if sentinel_kwargs is None:
        sentinel_kwargs = dict(bounded)
    else:
        sentinel_kwargs = {**bounded, **dict(sentinel_kwargs)}
    manager = flavour.sentinel_class(
        sentinels,
        min_other_sentinels=int(given.get("min_other_sentinels", 0) or 0),
        sentinel_kwargs=sentinel_kwargs,
        **primary,
    )
    return manager.master_for(
        master_name,
        redis_class=flavour.redis_class,
        connection_pool_class=flavour.sentinel_pool_class,
        max_connections=MAX_CONNECTIONS,
        timeout=timeout,
        **options,
    )


def _pack(*args: str | int | float | bytes) -> bytes:
    """Encode one Redis command (RESP) into a single buffer, so it leaves in one send."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        else:
            data = arg.encode() if isinstance(arg, str) else repr(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def run_script(
    client: redis.Redis, script: Script, keys: list[str], args: Sequence[str | int | float | bytes]
) -> Any:
    """Run ``script`` as one packed ``EVALSHA`` on a pooled connection; return its reply.

    redis-py's generic command path (hooks, observability, retry wrappers) costs more than the
    round trip itself on the hot paths that use this (the fan-out, the inbox).
    """
    return _run(client, script, keys, args, None)[0]


def run_script_replicated(
    client: redis.Redis,
    script: Script,
    keys: list[str],
    args: Sequence[str | int | float | bytes],
    replicas: int,
    timeout_ms: int,
) -> tuple[Any, int]:
    """Run ``script`` as :func:`run_script` does, then ``WAIT replicas timeout_ms`` on the same
    connection (WAIT counts the replicas that have this connection's writes), sent in the same
    packet; return the script's reply and how many replicas acknowledged its writes."""
    reply, acked = _run(client, script, keys, args, (replicas, timeout_ms))
    return reply, int(acked)


def _run(
    client: redis.Redis,
    script: Script,
    keys: list[str],
    args: Sequence[str | int | float | bytes],
    wait: tuple[int, int] | None,
) -> tuple[Any, Any]:
    pool = client.connection_pool
    connection: Any = pool.get_connection()
    waited = [] if wait is None else [_pack("WAIT", *wait)]
    try:
        try:
            connection.send_packed_command(
                [_pack("EVALSHA", script.sha, len(keys), *keys, *args), *waited]
            )
            return _replies(connection, wait)
        except NoScriptError:
            # A restarted or flushed Redis (or a promoted replica that never saw SCRIPT LOAD)
            # forgets scripts; load it and run it once more.
            connection.send_command("SCRIPT", "LOAD", script.script)
            script.sha = connection.read_response().decode()
            connection.send_packed_command(
                [_pack("EVALSHA", script.sha, len(keys), *keys, *args), *waited]
            )
            return _replies(connection, wait)
    except (redis.ConnectionError, redis.TimeoutError):
        connection.disconnect()
        raise
    finally:
        pool.release(connection)


def _replies(connection: Any, wait: tuple[int, int] | None) -> tuple[Any, Any]:
    """The script's reply and, when WAIT followed it, WAIT's; the script's error is raised
    once WAIT's reply is read too, so the connection is left with nothing unread."""
    try:
        reply, error = _reply(connection), None
    except redis.ResponseError as exc:
        reply, error = None, exc
    acked = _reply(connection) if wait is not None else None
    if error is not None:
        raise error
    return reply, acked


class ReplyLost(redis.ConnectionError):
    """A command was sent whole but its reply never came: Redis may or may not have run it."""


def _reply(connection: Any) -> Any:
    try:
        return connection.read_response()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ReplyLost(describe(exc)) from exc


def store_error(exc: redis.RedisError, fix: str | None = None) -> StoreError:
    """The typed error of a failed Redis call: :class:`StoreUnavailable` when Redis could not
    be reached or its reply was lost (a later try may succeed), else :class:`StoreError`."""
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return StoreUnavailable(describe(exc), fix)
    return StoreError(describe(exc), fix)


@contextmanager
def store_errors() -> Iterator[None]:
    """Turn redis-py's errors into the store errors callers outside this backend catch."""
    try:
        yield
    except redis.RedisError as exc:
        raise store_error(exc) from exc
