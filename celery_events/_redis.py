"""Redis clients with bounded waits: the one place redis-py is configured."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

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
