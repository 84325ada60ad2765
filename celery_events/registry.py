"""The shared subscription registry, written by subscribers and read by publishers.

It lives in Redis (by default the broker's), under ``{key_prefix}``:

- ``subscriptions``: a hash from service name to that service's whole set of subscriptions,
  so that re-registering a service replaces its set in one atomic write;
- ``version``: a random token replaced with every write, which publishers poll to notice
  changes (a token, not a counter, so that a Redis that lost its data and counts again from
  zero can never look unchanged);
- ``published``: a hash of ``"service event-name"`` fields, which services published what
  (the catalog reads it).

Publishers keep a cached, pattern-matched view. A background thread checks ``version`` every
``registry_refresh_interval`` seconds, so a publish in the steady state makes no registry round
trip, and a view older than ``registry_max_staleness`` is reloaded before it is used: a new
subscription is seen by every publisher within that bound.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from .errors import RegistryError, describe
from .names import Matcher

__all__ = ["Subscription", "Registry"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Subscription:
    """One handler's interest in a pattern: where its deliveries go."""

    #: The pattern the handler subscribed to, such as ``user.*``.
    pattern: str
    #: The subscribing service.
    service: str
    #: The Celery task name of the handler, such as ``orders.welcome_order``.
    handler: str
    #: The queue its deliveries are sent to.
    queue: str
    #: When the service last recorded its subscriptions (Unix time), or 0 before that.
    registered_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "handler": self.handler, "queue": self.queue}


@dataclass(frozen=True)
class _View:
    version: bytes | None
    subscriptions: tuple[Subscription, ...]
    matcher: Matcher[Subscription]


class Registry:
    """Read and write the subscriptions of every service sharing one Redis.

    >>> registry = Registry(client)                                   # doctest: +SKIP
    >>> registry.register("orders", [Subscription("user.*", "orders", "orders.welcome", "events.orders")])  # doctest: +SKIP
    >>> [s.handler for s in registry.match("user.registered")]        # doctest: +SKIP
    ['orders.welcome']
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        key_prefix: str = "celery_events:",
        refresh_interval: float = 0.25,
        max_staleness: float = 1.0,
    ) -> None:
        self.client = client
        self.subscriptions_key = f"{key_prefix}subscriptions"
        self.version_key = f"{key_prefix}version"
        self.published_key = f"{key_prefix}published"
        self._refresh_interval = refresh_interval
        self._max_staleness = max_staleness
        self._view: _View | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._watcher_pid = 0
        self._closed = threading.Event()

    # -- writing ---------------------------------------------------------------------------

    def register(self, service: str, subscriptions: Iterable[Subscription]) -> None:
        """Replace ``service``'s subscriptions with ``subscriptions``, atomically."""
        entries = [s.to_json() for s in subscriptions]
        record = {"registered_at": time.time(), "subscriptions": entries}
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(self.subscriptions_key, service, json.dumps(record))
                pipe.set(self.version_key, uuid.uuid4().hex)
                pipe.execute()
        except redis.RedisError as exc:
            if isinstance(exc, redis.exceptions.NoPermissionError) or "permission" in str(exc):
                fix = (
                    "The registry's Redis user may not write it: grant write rights on"
                    f" {self.subscriptions_key} and {self.version_key} (ACL SETUSER <user>"
                    " '~*', or the bus's key_prefix), or use a registry_url whose user may."
                )
            else:
                fix = "Check that Redis is reachable at the registry URL."
            raise RegistryError(
                f"Could not record the subscriptions of service {service!r} in the registry:"
                f" {describe(exc)}. Nothing was recorded. {fix}"
            ) from exc
        log.info(
            "celery-events: recorded %d subscription(s) of service %r",
            len(entries),
            service,
        )

    def unregister(self, service: str) -> None:
        """Remove every subscription of ``service``; its queued deliveries stay queued."""
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hdel(self.subscriptions_key, service)
                pipe.set(self.version_key, uuid.uuid4().hex)
                pipe.execute()
        except redis.RedisError as exc:
            raise RegistryError(f"Could not unregister service {service!r}: {describe(exc)}.") from exc

    # -- reading ---------------------------------------------------------------------------

    def subscriptions(self) -> list[Subscription]:
        """Read every subscription of every service straight from Redis (no cache)."""
        return list(self._load()[1])

    def match(self, name: str) -> list[Subscription]:
        """Return the subscriptions matching event ``name`` from a view at most
        ``registry_max_staleness`` seconds old."""
        self._ensure_watcher()
        view = self._view
        if view is None or time.monotonic() - self._checked_at > self._max_staleness:
            view = self.refresh()
        return view.matcher.match(name)

    def refresh(self) -> _View:
        """Check the registry's version now and reload the view if it changed."""
        with self._lock:
            checked = time.monotonic()
            try:
                version = self.client.get(self.version_key)
                view = self._view
                if view is None or version != view.version:
                    version, subscriptions = self._load()
                    view = _View(version, subscriptions, Matcher((s.pattern, s) for s in subscriptions))
                    self._view = view
            except redis.RedisError as exc:
                raise RegistryError(
                    f"Could not read the subscription registry: {describe(exc)}. Check that Redis is"
                    " reachable at the registry URL."
                ) from exc
            self._checked_at = checked
            return view

    def _load(self) -> tuple[bytes | None, tuple[Subscription, ...]]:
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.get(self.version_key)
                pipe.hgetall(self.subscriptions_key)
                version, records = pipe.execute()
        except redis.RedisError as exc:
            raise RegistryError(f"Could not read the subscription registry: {describe(exc)}.") from exc
        return version, tuple(_decode(records))

    # -- the watcher -----------------------------------------------------------------------

    def _ensure_watcher(self) -> None:
        pid = os.getpid()
        if self._watcher_pid == pid or self._closed.is_set():
            return
        with self._lock:
            if self._watcher_pid == pid:
                return
            # A forked child inherits the parent's memory but not its threads.
            self._watcher_pid = pid
            self._watcher = threading.Thread(
                target=self._watch, name="celery-events-registry", daemon=True
            )
            self._watcher.start()

    def _watch(self) -> None:
        failing = False
        while not self._closed.wait(self._refresh_interval):
            try:
                self.refresh()
            except RegistryError as exc:
                if not failing:
                    log.warning("celery-events: registry check failed, will retry: %s", exc)
                failing = True
            else:
                if failing:
                    log.info("celery-events: registry reachable again")
                failing = False

    def close(self) -> None:
        """Stop the background check; the registry can no longer match."""
        self._closed.set()


def _decode(records: dict[bytes, bytes]) -> Iterable[Subscription]:
    for service_raw, raw in sorted(records.items()):
        service = service_raw.decode()
        try:
            record = json.loads(raw)
            registered_at = float(record["registered_at"])
            entries: Sequence[dict[str, str]] = record["subscriptions"]
            for entry in entries:
                yield Subscription(
                    pattern=entry["pattern"],
                    service=service,
                    handler=entry["handler"],
                    queue=entry["queue"],
                    registered_at=registered_at,
                )
        except (ValueError, KeyError, TypeError) as exc:
            # One service's corrupt record must not stop every publisher.
            log.error("celery-events: skipping unreadable registry record of %r: %s", service, exc)
