"""The shared subscription registry, written by subscribers and read by publishers.

It is kept by the backend's registry store (:class:`~celery_events.backends.base.RegistryStore`;
on Redis, by default the broker's, see ``backends/redis/stores.py``): one record per service
holding that service's whole set of subscriptions, so that re-registering a service replaces
its set in one atomic write, and a version token replaced with every write, which publishers
poll to notice changes.

Signed records: a service with a signing key signs its record (over
:func:`record_signing_input`: its name, ``registered_at`` and its subscriptions) and puts the key
id and signature in it (``keyid``, ``signature``). A registry that requires signatures (the
service has ``trusted_keys``) ignores a record that is unsigned, badly signed, signed with
another service's key, or older than one it already saw for that service (an old record written
back), logs it once per distinct record, and lists it in :meth:`Registry.ignored`. While a
service's current record is ignored (or was deleted), a registry that saw a valid one for it keeps
using the newest valid one, so an overwrite cannot make it drop or redirect that service's
deliveries; a fresh process that never saw one has nothing to use for that service until the
service registers again, which is why the registry's keys should also be confined by Redis ACLs
(``celery eventbus acl``): then no other service can overwrite or delete the record at all.

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _plainjson
from .backends.base import RegistryStore, StoreError
from .declarations import COMPATIBILITY_MODES, dataschema_uri
from .errors import (
    ConfigurationError,
    InvalidEventName,
    InvalidPattern,
    InvalidSignature,
    RegistryError,
    describe,
    shown,
)
from .names import Matcher, validate_name, validate_pattern

if TYPE_CHECKING:
    from .trust.keys import Keyring

__all__ = [
    "Subscription",
    "RegisteredDeclaration",
    "Registry",
    "IgnoredRecord",
    "queue_arguments",
    "record_signing_input",
]

#: Put before the canonical record, so that a record's signature can never be taken for the
#: signature of anything else a service signs (an event's envelope).
RECORD_SIGNING_CONTEXT = b"celery-events registry record 1\n"

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
    #: The versions of the matching events the handler accepts (``@bus.subscribe(...,
    #: versions=[...])``), sorted; empty: every version. An event without a version (its
    #: name undeclared) goes to every matching subscription.
    versions: tuple[int, ...] = ()
    #: The JSON Schema the handler itself accepts (its pydantic parameter, or ``schema=``),
    #: or ``None``.
    accepts: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def arguments(self) -> dict[str, str | int | bool]:
        """:attr:`queue_arguments` as a dict."""
        return dict(self.queue_arguments)

    def accepts_version(self, version: int | None) -> bool:
        """Whether this subscription gets an event of ``version`` (``None``: unversioned)."""
        return version is None or not self.versions or version in self.versions

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "pattern": self.pattern, "handler": self.handler, "queue": self.queue
        }
        if self.queue_arguments:
            entry["arguments"] = dict(self.queue_arguments)
        if self.versions:
            entry["versions"] = list(self.versions)
        if self.accepts is not None:
            entry["schema"] = self.accepts
        return entry


@dataclass(frozen=True)
class RegisteredDeclaration:
    """One event name and version a service declared, as its registry record holds it."""

    #: The declaring (publishing) service.
    service: str
    name: str
    #: Its version, or ``None`` for a declaration without a schema.
    version: int | None
    #: Its current JSON Schema document, or ``None``.
    schema: dict[str, Any] | None = field(default=None, compare=False)
    #: Its compatibility mode (one of ``celery_events.declarations.COMPATIBILITY_MODES``).
    compatibility: str = "BACKWARD"
    #: The ``dataschema`` URI its events carry.
    dataschema: str | None = None
    #: The schemas this service registered for this name and version before the current one,
    #: oldest first (what the transitive compatibility modes check against).
    history: tuple[dict[str, Any], ...] = field(default=(), compare=False)
    sensitive: tuple[str, ...] = ()
    #: When the service recorded it (Unix time).
    registered_at: float = field(default=0.0, compare=False)

    @property
    def schemas(self) -> tuple[dict[str, Any], ...]:
        """Every schema registered for this name and version by this service, oldest first,
        the current one last."""
        return self.history if self.schema is None else (*self.history, self.schema)

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name}
        if self.version is not None:
            entry["version"] = self.version
        if self.schema is not None:
            entry["schema"] = self.schema
            entry["compatibility"] = self.compatibility
        if self.dataschema is not None:
            entry["dataschema"] = self.dataschema
        if self.history:
            entry["history"] = list(self.history)
        if self.sensitive:
            entry["sensitive"] = list(self.sensitive)
        return entry


def queue_arguments(arguments: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """``arguments`` as :attr:`Subscription.queue_arguments` holds them."""
    return tuple(sorted((arguments or {}).items()))


def record_signing_input(
    service: str, registered_at: float, entries: list[Any], declarations: list[Any] | None = None
) -> bytes:
    """The bytes a registry record's signature covers: the service it is the record of, its
    ``registered_at``, its subscriptions and its declarations (every member of every entry;
    a record without declarations signs none), as canonical JSON (sorted keys, compact, UTF-8)
    after :data:`RECORD_SIGNING_CONTEXT`."""
    signed: dict[str, Any] = {
        "service": service, "registered_at": registered_at, "subscriptions": entries
    }
    if declarations is not None:
        signed["declarations"] = declarations
    canonical = json.dumps(
        signed,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return RECORD_SIGNING_CONTEXT + canonical.encode("utf-8")


@dataclass(frozen=True)
class IgnoredRecord:
    """A service's registry record that publishers do not use, and why."""

    service: str
    #: A full sentence: what is wrong with it.
    reason: str
    #: Its ``registered_at``, when it has a readable one.
    registered_at: float | None = None
    #: When the subscriptions used for ``service`` instead come from the newest valid record
    #: seen by this process: that record's ``registered_at``; else None (none are used).
    using_registered_at: float | None = None


@dataclass(frozen=True)
class _Valid:
    """The newest valid record seen for one service."""

    registered_at: float
    subscriptions: tuple[Subscription, ...]
    declarations: tuple[RegisteredDeclaration, ...] = ()


@dataclass(frozen=True)
class _Records:
    """What one read of the store found usable."""

    version: bytes | None
    subscriptions: tuple[Subscription, ...]
    declarations: tuple[RegisteredDeclaration, ...]


@dataclass(frozen=True)
class _View:
    version: bytes | None
    subscriptions: tuple[Subscription, ...]
    matcher: Matcher[Subscription]
    #: Every registered declaration, by event name.
    declared: dict[str, tuple[RegisteredDeclaration, ...]]


class Registry:
    """Read and write the subscriptions of every service sharing one registry store.

    The bus makes its own (``bus.registry``) on its backend's store.

    >>> from celery import Celery
    >>> from celery_events import EventBus, Subscription
    >>> bus = EventBus(Celery("orders", broker="memory://"), service="orders")
    >>> registry = bus.registry
    >>> registry.register("orders", [Subscription("user.*", "orders", "orders.welcome", "events.orders")])
    >>> [s.handler for s in registry.match("user.registered")]
    ['orders.welcome']
    """

    def __init__(
        self,
        store: RegistryStore,
        *,
        refresh_interval: float = 0.25,
        max_staleness: float = 1.0,
        keyring: Keyring | None = None,
        require_signatures: bool = False,
    ) -> None:
        """``keyring`` signs the records this registry writes (when it has a signing key) and,
        with ``require_signatures``, checks the records it reads."""
        if require_signatures and keyring is None:
            raise ConfigurationError(
                "A registry that requires signatures needs the keys to check them with: set"
                " trusted_keys (or require_signatures=False)."
            )
        self.store = store
        self.keyring = keyring
        self.require_signatures = require_signatures
        self._refresh_interval = refresh_interval
        self._max_staleness = max_staleness
        self._view: _View | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._watcher_pid = 0
        self._closed = threading.Event()
        # The bad record last reported per service, so that one is logged once, not on every
        # reload of the view (b"" for a record that went missing).
        self._reported: dict[str, bytes] = {}
        self._ignored: tuple[IgnoredRecord, ...] = ()
        # With require_signatures: the newest valid record seen per service, used while the
        # stored one is ignored, and the bar a replayed older record must clear.
        self._valid: dict[str, _Valid] = {}

    # -- writing ---------------------------------------------------------------------------

    def register(
        self,
        service: str,
        subscriptions: Iterable[Subscription],
        declarations: Iterable[RegisteredDeclaration] = (),
    ) -> None:
        """Replace ``service``'s subscriptions and declarations with these, atomically; signed
        when the keyring has a signing key (which must be ``service``'s)."""
        entries = [s.to_json() for s in subscriptions]
        declared = [d.to_json() for d in declarations]
        self._write(service, entries, declared)
        log.info(
            "celery-events: recorded %d subscription(s) and %d declaration(s) of service %r",
            len(entries),
            len(declared),
            service,
        )

    def encode(
        self,
        service: str,
        entries: list[dict[str, Any]],
        registered_at: float,
        declarations: list[dict[str, Any]] | None = None,
    ) -> str:
        """The record text of ``service`` with subscription ``entries`` (as
        :meth:`Subscription.to_json` gives them) and ``declarations`` (as
        :meth:`RegisteredDeclaration.to_json` gives them; none: the record has no
        ``declarations`` member), signed when the keyring can sign."""
        record: dict[str, Any] = {"registered_at": registered_at, "subscriptions": entries}
        if declarations:
            record["declarations"] = declarations
        else:
            declarations = None
        signing = None if self.keyring is None else self.keyring.signing_key
        if signing is not None:
            if signing.service != service:
                raise ConfigurationError(
                    f"The signing key {signing.service}/{signing.key_id} is not a key of service"
                    f" {service!r}: a service signs only its own registry record. Register"
                    f" {service!r} from its own configuration."
                )
            key_id, signature = self.keyring.sign(  # type: ignore[union-attr]
                record_signing_input(service, registered_at, entries, declarations)
            )
            record["keyid"] = key_id
            record["signature"] = signature
        return json.dumps(record)

    def _write(
        self,
        service: str,
        entries: list[dict[str, Any]],
        declarations: list[dict[str, Any]] | None = None,
    ) -> None:
        text = self.encode(service, entries, time.time(), declarations)
        try:
            self.store.write(service, text)
        except StoreError as exc:
            fix = exc.fix or "Check that Redis is reachable at the registry URL."
            raise RegistryError(
                f"Could not record the subscriptions of service {service!r} in the registry:"
                f" {describe(exc)}. Nothing was recorded. {fix}"
            ) from exc

    def unregister(self, service: str) -> None:
        """Remove every subscription of ``service``; its queued deliveries stay queued.

        With a signing key this writes a signed record of no subscriptions instead of deleting
        the record: publishers that require signatures take a deleted record for tampering
        (and keep using the last valid one they saw), but believe a signed empty one.
        """
        if self.keyring is not None and self.keyring.signing_key is not None:
            self._write(service, [])
            return
        try:
            self.store.remove(service)
        except StoreError as exc:
            raise RegistryError(f"Could not unregister service {service!r}: {describe(exc)}.") from exc

    # -- reading ---------------------------------------------------------------------------

    def subscriptions(self) -> list[Subscription]:
        """Read every subscription of every service straight from the store (no cache)."""
        with self._lock:
            return list(self._load().subscriptions)

    def declarations(self) -> list[RegisteredDeclaration]:
        """Read every declaration of every service straight from the store (no cache), sorted
        by name, version and service."""
        with self._lock:
            return list(self._load().declarations)

    def declared(self, name: str) -> tuple[RegisteredDeclaration, ...]:
        """The registered declarations of event ``name`` (every version, every service), from
        a view at most ``registry_max_staleness`` seconds old."""
        return self._fresh_view().declared.get(name, ())

    def ignored(self) -> list[IgnoredRecord]:
        """The records the last read of the store ignored (see the module's docstring)."""
        return list(self._ignored)

    def match(self, name: str) -> list[Subscription]:
        """Return the subscriptions matching event ``name`` from a view at most
        ``registry_max_staleness`` seconds old."""
        return self._fresh_view().matcher.match(name)

    def is_fresh(self) -> bool:
        """Whether :meth:`match` answers from the cached view, without reading the store: a
        view was loaded and checked at most ``registry_max_staleness`` seconds ago.
        ``bus.apublish`` asks, and matches in a worker thread when it is not."""
        return self._view is not None and (
            time.monotonic() - self._checked_at <= self._max_staleness
        )

    def _fresh_view(self) -> _View:
        self._ensure_watcher()
        view = self._view
        if view is None or time.monotonic() - self._checked_at > self._max_staleness:
            view = self.refresh()
        return view

    def refresh(self) -> _View:
        """Check the registry's version now and reload the view if it changed."""
        with self._lock:
            checked = time.monotonic()
            try:
                version = self.store.version()
                view = self._view
                if view is None or version != view.version:
                    found = self._load()
                    declared: dict[str, list[RegisteredDeclaration]] = {}
                    for declaration in found.declarations:
                        declared.setdefault(declaration.name, []).append(declaration)
                    view = _View(
                        found.version,
                        found.subscriptions,
                        Matcher((s.pattern, s) for s in found.subscriptions),
                        {name: tuple(items) for name, items in declared.items()},
                    )
                    self._view = view
            except StoreError as exc:
                fix = exc.fix or "Check that Redis is reachable at the registry URL."
                raise RegistryError(
                    f"Could not read the subscription registry: {describe(exc)}. {fix}"
                ) from exc
            self._checked_at = checked
            return view

    def _load(self) -> _Records:
        # The services whose records must be read even if the store's index lost them: every
        # service with a trusted key, and every one seen valid here.
        known = set(self._valid)
        if self.require_signatures and self.keyring is not None:
            known.update(self.keyring.services())
        try:
            version, records = self.store.load(sorted(known))
        except StoreError as exc:
            raise RegistryError(f"Could not read the subscription registry: {describe(exc)}.") from exc
        subscriptions, declarations = self._decode(records)
        declarations.sort(key=lambda d: (d.name, d.version or 0, d.service))
        return _Records(version, tuple(subscriptions), tuple(declarations))

    def _decode(
        self, records: dict[bytes, bytes]
    ) -> tuple[list[Subscription], list[RegisteredDeclaration]]:
        """Every subscription and declaration of every usable record; a bad record skips its
        service only."""
        bad: dict[str, bytes] = {}
        ignored: list[IgnoredRecord] = []
        found: list[Subscription] = []
        declared: list[RegisteredDeclaration] = []
        texts = {k.decode("utf-8", "backslashreplace"): v for k, v in records.items()}
        # A service seen valid whose record is gone: with signatures required, a deletion
        # is as unproven as an overwrite (a signed unregister writes an empty record).
        missing = set(self._valid) - set(texts) if self.require_signatures else set()
        for service in sorted(set(texts) | missing):
            raw = texts.get(service)
            try:
                if raw is None:
                    raise _BadRecord("it was deleted without a signed record replacing it.")
                subscriptions, declarations = self._check(service, raw)
            except _BadRecord as exc:
                # One service's bad record must not stop every publisher.
                bad[service] = raw or b""
                valid = self._valid.get(service)
                if valid is None:
                    outcome = (
                        " Its subscriptions are ignored until it registers again (restart its"
                        " worker, or call bus.register())."
                    )
                else:
                    outcome = (
                        " The newest valid record seen here (registered at"
                        f" {_iso(valid.registered_at)}) is used instead."
                    )
                    found.extend(valid.subscriptions)
                    declared.extend(valid.declarations)
                ignored.append(
                    IgnoredRecord(
                        service,
                        str(exc),
                        _registered_at(raw),
                        None if valid is None else valid.registered_at,
                    )
                )
                if self._reported.get(service) != (raw or b""):
                    log.error(
                        "celery-events: ignoring the registry record of service %r: %s%s",
                        service,
                        exc,
                        outcome,
                    )
                continue
            found.extend(subscriptions)
            declared.extend(declarations)
        self._reported = bad
        self._ignored = tuple(ignored)
        return found, declared

    def _check(
        self, service: str, raw: bytes
    ) -> tuple[tuple[Subscription, ...], tuple[RegisteredDeclaration, ...]]:
        """The subscriptions and declarations of a usable record, or :class:`_BadRecord`
        saying why not."""
        record, subscriptions, declarations = _parse_record(service, raw)
        registered_at = float(record["registered_at"])
        if not self.require_signatures or self.keyring is None:
            return tuple(subscriptions), tuple(declarations)
        if not record.get("signature"):
            raise _BadRecord(
                "it is not signed, and this service believes only signed records (it has"
                " trusted_keys; require_signatures). Give that service its signing_key and"
                " restart its worker."
            )
        try:
            self.keyring.verify(
                service,
                record.get("keyid"),
                record_signing_input(
                    service,
                    record["registered_at"],
                    record["subscriptions"],
                    record["declarations"] if "declarations" in record else None,
                ),
                record.get("signature"),
            )
        except InvalidSignature as exc:
            text = str(exc).replace("The event's", "Its").replace("The event", "It")
            raise _BadRecord(f"its signature is refused: {text}") from None
        valid = self._valid.get(service)
        if valid is not None and registered_at < valid.registered_at:
            raise _BadRecord(
                f"it was registered at {_iso(registered_at)}, before the record of"
                f" {_iso(valid.registered_at)} already seen: an older record written back."
            )
        self._valid[service] = _Valid(registered_at, tuple(subscriptions), tuple(declarations))
        return tuple(subscriptions), tuple(declarations)

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


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def _registered_at(raw: bytes | None) -> float | None:
    try:
        record = _plainjson.loads(raw) if raw else None
    except ValueError:
        return None
    value = record.get("registered_at") if isinstance(record, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _decode_record(service: str, raw: bytes) -> list[Subscription]:
    """The subscriptions of one service's record; raise :class:`_BadRecord` naming the problem."""
    return _parse_record(service, raw)[1]


def _parse_record(
    service: str, raw: bytes
) -> tuple[dict[str, Any], list[Subscription], list[RegisteredDeclaration]]:
    """One service's record, its subscriptions and its declarations; raise
    :class:`_BadRecord` naming the problem."""
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
        versions = entry.get("versions", [])
        if not isinstance(versions, list) or not all(_is_version(v) for v in versions):
            raise _BadRecord(
                f"subscription {number} has versions {shown(versions, 80)}, not a list of whole"
                " numbers from 1."
            )
        accepts = entry.get("schema")
        if accepts is not None and not isinstance(accepts, dict):
            raise _BadRecord(f"subscription {number} has schema {shown(accepts, 80)}, not an object.")
        found.append(
            Subscription(
                pattern=pattern,
                service=service,
                handler=fields["handler"],
                queue=fields["queue"],
                registered_at=float(registered_at),
                queue_arguments=queue_arguments(arguments),
                versions=tuple(sorted(set(versions))),
                accepts=accepts,
            )
        )
    return record, found, _parse_declarations(service, record, float(registered_at))


def _is_version(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _parse_declarations(
    service: str, record: dict[str, Any], registered_at: float
) -> list[RegisteredDeclaration]:
    entries = record.get("declarations", [])
    if not isinstance(entries, list):
        raise _BadRecord(f"its declarations are {shown(entries, 80)}, not a list.")
    found = []
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _BadRecord(f"declaration {number} is {shown(entry, 80)}, not an object.")
        try:
            name = validate_name(entry.get("name"))
        except InvalidEventName as exc:
            raise _BadRecord(f"declaration {number}: {exc}") from None
        version = entry.get("version")
        if version is not None and not _is_version(version):
            raise _BadRecord(
                f"declaration {number} ({name}) has version {shown(version, 40)}, not a whole"
                " number from 1."
            )
        schema = entry.get("schema")
        history = entry.get("history", [])
        if schema is not None and not isinstance(schema, dict):
            raise _BadRecord(f"declaration {number} ({name}) has a schema that is not an object.")
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
            raise _BadRecord(f"declaration {number} ({name}) has a history that is not a list of schemas.")
        compatibility = entry.get("compatibility", "BACKWARD")
        if compatibility not in COMPATIBILITY_MODES:
            raise _BadRecord(
                f"declaration {number} ({name}) has compatibility {shown(compatibility, 40)}, not"
                f" one of {', '.join(COMPATIBILITY_MODES)}."
            )
        dataschema = entry.get("dataschema")
        if dataschema is None and version is not None:
            dataschema = dataschema_uri(name, version)
        if dataschema is not None and not isinstance(dataschema, str):
            raise _BadRecord(f"declaration {number} ({name}) has a dataschema that is not a string.")
        sensitive = entry.get("sensitive", [])
        if not isinstance(sensitive, list) or not all(isinstance(p, str) for p in sensitive):
            raise _BadRecord(f"declaration {number} ({name}) has sensitive paths that are not strings.")
        found.append(
            RegisteredDeclaration(
                service=service,
                name=name,
                version=version,
                schema=schema,
                compatibility=compatibility,
                dataschema=dataschema,
                history=tuple(history),
                sensitive=tuple(sensitive),
                registered_at=registered_at,
            )
        )
    return found


