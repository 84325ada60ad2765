"""The shared subscription registry, written by subscribers and read by publishers.

It is kept by the backend's registry store (:class:`~celery_events.backends.base.RegistryStore`;
on Redis, by default the broker's, see ``backends/redis/stores.py``): one record per service
holding that service's whole set of subscriptions, so that re-registering a service replaces
its set in one atomic write, and a version token replaced with every write, which publishers
poll to notice changes.

Publishers keep a cached, pattern-matched view. A background thread checks ``version`` every
``registry_refresh_interval`` seconds, so a publish in the steady state makes no registry round
trip, and a view older than ``registry_max_staleness`` is reloaded before it is used: a new
subscription is seen by every publisher within that bound.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import _plainjson
from .backends.base import RegistryStore, StoreError
from .errors import InvalidPattern, RegistryError, describe, shown
from .names import Matcher, validate_pattern

__all__ = ["Subscription", "Registry", "queue_arguments"]

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
    #: The broker arguments its owner declares ``queue`` with (RabbitMQ: ``x-queue-type``,
    #: the delivery limit, the dead-letter exchange), as sorted ``(name, value)`` pairs, so
    #: that a publisher declaring a missing queue declares it identically; empty where the
    #: backend has none. Readers from before this field ignore it in the record.
    queue_arguments: tuple[tuple[str, str | int | bool], ...] = ()

    @property
    def arguments(self) -> dict[str, str | int | bool]:
        """:attr:`queue_arguments` as a dict."""
        return dict(self.queue_arguments)

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "pattern": self.pattern, "handler": self.handler, "queue": self.queue
        }
        if self.queue_arguments:
            entry["arguments"] = dict(self.queue_arguments)
        return entry


def queue_arguments(arguments: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """``arguments`` as :attr:`Subscription.queue_arguments` holds them."""
    return tuple(sorted((arguments or {}).items()))


@dataclass(frozen=True)
class _View:
    version: bytes | None
    subscriptions: tuple[Subscription, ...]
    matcher: Matcher[Subscription]


class Registry:
    """Read and write the subscriptions of every service sharing one registry store.

    The bus makes its own (``bus.registry``) on its backend's store.

    >>> registry = bus.registry                                       # doctest: +SKIP
    >>> registry.register("orders", [Subscription("user.*", "orders", "orders.welcome", "events.orders")])  # doctest: +SKIP
    >>> [s.handler for s in registry.match("user.registered")]        # doctest: +SKIP
    ['orders.welcome']
    """

    def __init__(
        self,
        store: RegistryStore,
        *,
        refresh_interval: float = 0.25,
        max_staleness: float = 1.0,
    ) -> None:
        self.store = store
        self._refresh_interval = refresh_interval
        self._max_staleness = max_staleness
        self._view: _View | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._watcher_pid = 0
        self._closed = threading.Event()
        # The bad record last reported per service, so that one is logged once, not on every
        # reload of the view.
        self._reported: dict[str, bytes] = {}

    # -- writing ---------------------------------------------------------------------------

    def register(self, service: str, subscriptions: Iterable[Subscription]) -> None:
        """Replace ``service``'s subscriptions with ``subscriptions``, atomically."""
        entries = [s.to_json() for s in subscriptions]
        record = {"registered_at": time.time(), "subscriptions": entries}
        try:
            self.store.write(service, json.dumps(record))
        except StoreError as exc:
            fix = exc.fix or "Check that Redis is reachable at the registry URL."
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
            self.store.remove(service)
        except StoreError as exc:
            raise RegistryError(f"Could not unregister service {service!r}: {describe(exc)}.") from exc

    # -- reading ---------------------------------------------------------------------------

    def subscriptions(self) -> list[Subscription]:
        """Read every subscription of every service straight from the store (no cache)."""
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
                version = self.store.version()
                view = self._view
                if view is None or version != view.version:
                    version, subscriptions = self._load()
                    view = _View(version, subscriptions, Matcher((s.pattern, s) for s in subscriptions))
                    self._view = view
            except StoreError as exc:
                fix = exc.fix or "Check that Redis is reachable at the registry URL."
                raise RegistryError(
                    f"Could not read the subscription registry: {describe(exc)}. {fix}"
                ) from exc
            self._checked_at = checked
            return view

    def _load(self) -> tuple[bytes | None, tuple[Subscription, ...]]:
        try:
            version, records = self.store.load()
        except StoreError as exc:
            raise RegistryError(f"Could not read the subscription registry: {describe(exc)}.") from exc
        return version, tuple(self._decode(records))

    def _decode(self, records: dict[bytes, bytes]) -> Iterable[Subscription]:
        """Every subscription of every readable record; a bad record skips its service only."""
        bad: dict[str, bytes] = {}
        for service_raw, raw in sorted(records.items()):
            service = service_raw.decode("utf-8", "backslashreplace")
            try:
                found = _decode_record(service, raw)
            except _BadRecord as exc:
                # One service's corrupt record must not stop every publisher.
                bad[service] = raw
                if self._reported.get(service) != raw:
                    log.error(
                        "celery-events: skipping the registry record of service %r: %s Its"
                        " subscriptions are ignored until it registers again (restart its"
                        " worker, or call bus.register()).",
                        service,
                        exc,
                    )
                continue
            yield from found
        self._reported = bad

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
            except Exception as exc:
                # Whatever goes wrong, the watcher keeps watching: if it stopped, every view
                # would go stale and each publish would pay for the reload itself.
                if not failing:
                    log.warning(
                        "celery-events: registry check failed, will retry: %s",
                        exc,
                        exc_info=not isinstance(exc, RegistryError),
                    )
                failing = True
            else:
                if failing:
                    log.info("celery-events: registry reachable again")
                failing = False

    # -- the catalog -----------------------------------------------------------------------

    def record_published(self, service: str, name: str) -> None:
        """Note in the catalog that ``service`` published event ``name`` (now)."""
        try:
            self.store.record_published(f"{service} {name}", str(time.time()))
        except StoreError as exc:
            raise RegistryError(f"Could not record {name!r} in the event catalog: {exc}.") from exc

    def publishers(self) -> list[tuple[str, str]]:
        """The ``(service, event name)`` pairs publishers recorded, sorted."""
        try:
            fields = self.store.published()
        except StoreError as exc:
            fix = exc.fix or "Check that Redis is reachable at the registry URL."
            raise RegistryError(f"Could not read the event catalog: {exc}. {fix}") from exc
        pairs = []
        for text in fields:
            service, _, name = text.partition(" ")
            if name:
                pairs.append((service, name))
        return sorted(pairs)

    def close(self) -> None:
        """Stop the background check; the registry can no longer match."""
        self._closed.set()


class _BadRecord(ValueError):
    """A registry record that is not what :meth:`Registry.register` writes."""


def _decode_record(service: str, raw: bytes) -> list[Subscription]:
    """The subscriptions of one service's record; raise :class:`_BadRecord` naming the problem."""
    try:
        record = _plainjson.loads(raw)
    except ValueError as exc:  # also bytes that are not UTF-8
        raise _BadRecord(f"it is not JSON ({describe(exc)}).") from None
    if not isinstance(record, dict):
        raise _BadRecord(f"it is a JSON {type(record).__name__}, not an object.")
    registered_at = record.get("registered_at")
    if (
        isinstance(registered_at, bool)
        or not isinstance(registered_at, (int, float))
        or not math.isfinite(registered_at)
    ):
        raise _BadRecord(f"its registered_at is {registered_at!r}, not a Unix time.")
    entries = record.get("subscriptions")
    if not isinstance(entries, list):
        raise _BadRecord(f"its subscriptions are {shown(entries, 80)}, not a list.")
    found = []
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _BadRecord(f"subscription {number} is {shown(entry, 80)}, not an object.")
        try:
            pattern = validate_pattern(entry.get("pattern"))
        except InvalidPattern as exc:
            raise _BadRecord(f"subscription {number}: {exc}") from None
        fields = {}
        for name in ("handler", "queue"):
            value = entry.get(name)
            if not isinstance(value, str) or not value:
                raise _BadRecord(
                    f"subscription {number} has {name} {shown(value, 80)}, not a non-empty string."
                )
            fields[name] = value
        arguments = entry.get("arguments", {})
        if not isinstance(arguments, dict) or not all(
            isinstance(value, (str, int)) for value in arguments.values()
        ):
            raise _BadRecord(
                f"subscription {number} has arguments {shown(arguments, 80)}, not an object of"
                " strings, numbers and booleans."
            )
        found.append(
            Subscription(
                pattern=pattern,
                service=service,
                handler=fields["handler"],
                queue=fields["queue"],
                registered_at=float(registered_at),
                queue_arguments=queue_arguments(arguments),
            )
        )
    return found


