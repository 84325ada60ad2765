"""The event catalog: every event name published, declared or subscribed, and who is at each end.

It is read from the registry, so no service's code is imported: a publisher records each event
name the first time one of its processes publishes it (in the same round trip as the
deliveries), services record their declarations (name, version, schema) and subscribers their
patterns when their workers start (or at deploy time, with ``celery eventbus register``). A
name is listed once someone published or declared it, with every subscription whose pattern
matches it; a declaring service counts as a publisher of the name even before it published
one. A subscription whose pattern matches no known name yet is listed under its pattern, so a
team sees both "who receives what we send" and "what we wait for that nobody sends".

Each name also shows the versions each publisher declared (with their ``dataschema``,
compatibility mode and schema fingerprint) and each subscription the versions it accepts.

The graph views (Mermaid and Graphviz DOT) draw services as nodes and each event as an edge
from its publisher to each subscribing service.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .contracts.schemas import fingerprint_of
from .names import pattern_matches
from .registry import RegisteredDeclaration, Registry, Subscription

__all__ = ["Catalog", "CatalogEntry", "read_publishers", "version_list"]

#: Graph node of an event nobody subscribes to, and of a pattern nobody published yet.
_NOBODY = "no subscriber"
_UNPUBLISHED = "not published yet"


@dataclass(frozen=True)
class CatalogEntry:
    """One event name and both of its ends."""

    #: The event name; for a subscription nobody published yet, its pattern.
    name: str
    #: Services that published it, sorted.
    publishers: tuple[str, ...]
    #: Subscriptions whose pattern matches it (or, unpublished, that subscribed the pattern).
    subscriptions: tuple[Subscription, ...]
    #: The registered declarations of this name (every service, every version), sorted by
    #: service and version.
    declarations: tuple[RegisteredDeclaration, ...] = ()

    @property
    def published(self) -> bool:
        """Whether any service publishes this name (published it, or declared it)."""
        return bool(self.publishers)

    def versions_of(self, service: str) -> tuple[int, ...]:
        """The versions ``service`` declared for this name, sorted (empty: none declared)."""
        return tuple(
            sorted(
                d.version
                for d in self.declarations
                if d.service == service and d.version is not None
            )
        )

    @property
    def subscribers(self) -> tuple[str, ...]:
        """The subscribing services, sorted, each once."""
        return tuple(sorted({s.service for s in self.subscriptions}))

    def to_json(self) -> dict[str, Any]:
        # As in registry records, "declarations" and a subscriber's "versions" appear only
        # when there are some: a subscriber without "versions" accepts every version.
        entry: dict[str, Any] = {
            "name": self.name,
            "published": self.published,
            "publishers": list(self.publishers),
            "subscribers": [_subscriber_json(s) for s in self.subscriptions],
        }
        if self.declarations:
            entry["declarations"] = [_declaration_json(d) for d in self.declarations]
        return entry


@dataclass(frozen=True)
class Catalog:
    """Every event name declared, published or subscribed across the services sharing a
    registry.

    >>> from celery import Celery
    >>> from celery_events import EventBus
    >>> from celery_events.catalog import Catalog
    >>> users = EventBus(Celery("users", broker="memory://"), service="users")
    >>> users.declare("user.registered")
    Declaration(name='user.registered', ...)
    >>> users.register()
    []
    >>> for service in ("mailer", "orders"):
    ...     bus = EventBus(Celery(service, broker="memory://"), service=service)
    ...     welcome = bus.subscribe("user.registered", name="welcome")(lambda event: None)
    ...     subscriptions = bus.register()
    >>> catalog = Catalog.load(bus.registry)
    >>> [(e.name, e.publishers, e.subscribers) for e in catalog.entries]
    [('user.registered', ('users',), ('mailer', 'orders'))]
    >>> print(catalog.to_mermaid())
    flowchart LR
    ...
    """

    #: Published or declared names first, sorted; then subscribed patterns that match none of
    #: them, sorted.
    entries: tuple[CatalogEntry, ...]

    @classmethod
    def build(
        cls,
        subscriptions: Iterable[Subscription],
        published: Iterable[tuple[str, str]],
        declarations: Iterable[RegisteredDeclaration] = (),
    ) -> Catalog:
        """Build the catalog from subscriptions, ``(service, event name)`` publish records and
        registered declarations (each declaring service is a publisher of its name)."""
        subscriptions = sorted(subscriptions, key=lambda s: (s.service, s.handler, s.pattern))
        publishers: dict[str, set[str]] = {}
        for service, name in published:
            publishers.setdefault(name, set()).add(service)
        declared: dict[str, list[RegisteredDeclaration]] = {}
        for declaration in declarations:
            declared.setdefault(declaration.name, []).append(declaration)
            publishers.setdefault(declaration.name, set()).add(declaration.service)
        entries = [
            CatalogEntry(
                name,
                tuple(sorted(publishers[name])),
                tuple(s for s in subscriptions if pattern_matches(s.pattern, name)),
                tuple(sorted(declared.get(name, ()), key=_by_service_and_version)),
            )
            for name in sorted(publishers)
        ]
        waiting: dict[str, list[Subscription]] = {}
        for subscription in subscriptions:
            if not any(pattern_matches(subscription.pattern, name) for name in publishers):
                waiting.setdefault(subscription.pattern, []).append(subscription)
        entries.extend(
            CatalogEntry(pattern, (), tuple(subs)) for pattern, subs in sorted(waiting.items())
        )
        return cls(tuple(entries))

    @classmethod
    def load(cls, registry: Registry) -> Catalog:
        """Read the catalog from ``registry`` now (no cache).

        Raises :class:`~celery_events.RegistryError` when the registry cannot be read.
        """
        return cls.build(
            registry.subscriptions(), read_publishers(registry), registry.declarations()
        )

    @property
    def services(self) -> tuple[str, ...]:
        """Every service that publishes or subscribes, sorted."""
        names = {p for e in self.entries for p in e.publishers}
        names.update(s for e in self.entries for s in e.subscribers)
        return tuple(sorted(names))

    def edges(self) -> list[tuple[str | None, str | None, str]]:
        """``(publisher, subscriber, event)`` edges of the graph, one per pair of services
        and event; ``None`` stands for "nobody" at an end without a service."""
        return [(p, s, entry.name) for p, s, entry in self._edges()]

    def _edges(self) -> list[tuple[str | None, str | None, CatalogEntry]]:
        edges: list[tuple[str | None, str | None, CatalogEntry]] = []
        for entry in self.entries:
            senders: tuple[str | None, ...] = entry.publishers or (None,)
            receivers: tuple[str | None, ...] = entry.subscribers or (None,)
            edges.extend((p, s, entry) for p in senders for s in receivers)
        return edges

    def to_json(self) -> dict[str, Any]:
        """The catalog as a JSON-ready dict: ``{"services": [...], "events": [...]}``."""
        return {"services": list(self.services), "events": [e.to_json() for e in self.entries]}

    def to_mermaid(self) -> str:
        """The graph as a Mermaid flowchart (GitHub renders it in a ```` ```mermaid ```` block)."""
        ids = {service: f"s{i}" for i, service in enumerate(self.services)}
        lines = ["flowchart LR"]
        lines.extend(f'    {ids[service]}["{service}"]' for service in self.services)
        edges = self._edges()
        if any(p is None for p, _, _ in edges):
            lines.append(f'    unpublished(["{_UNPUBLISHED}"])')
        if any(s is None for _, s, _ in edges):
            lines.append(f'    nobody(["{_NOBODY}"])')
        for publisher, subscriber, entry in edges:
            source = "unpublished" if publisher is None else ids[publisher]
            target = "nobody" if subscriber is None else ids[subscriber]
            arrow = "-->" if publisher is not None and subscriber is not None else "-.->"
            # '#' starts an entity code in Mermaid text, so it is written as one.
            label = _edge_label(entry, publisher, subscriber).replace("#", "#35;")
            lines.append(f'    {source} {arrow}|"{label}"| {target}')
        return "\n".join(lines) + "\n"

    def to_dot(self) -> str:
        """The graph in Graphviz DOT (``dot -Tsvg``)."""
        lines = [
            "digraph events {",
            "    rankdir=LR;",
            '    node [shape=box, style=rounded, fontname="Helvetica"];',
            '    edge [fontname="Helvetica", fontsize=10];',
        ]
        lines.extend(f"    {_dot_quote(service)};" for service in self.services)
        edges = self._edges()
        if any(p is None for p, _, _ in edges):
            lines.append(f'    "_unpublished" [label={_dot_quote(_UNPUBLISHED)}, shape=plaintext];')
        if any(s is None for _, s, _ in edges):
            lines.append(f'    "_nobody" [label={_dot_quote(_NOBODY)}, shape=plaintext];')
        for publisher, subscriber, entry in edges:
            source = '"_unpublished"' if publisher is None else _dot_quote(publisher)
            target = '"_nobody"' if subscriber is None else _dot_quote(subscriber)
            style = "" if publisher is not None and subscriber is not None else ", style=dashed"
            label = _dot_quote(_edge_label(entry, publisher, subscriber))
            lines.append(f"    {source} -> {target} [label={label}{style}];")
        lines.append("}")
        return "\n".join(lines) + "\n"


def read_publishers(registry: Registry) -> list[tuple[str, str]]:
    """Read the ``(service, event name)`` pairs recorded by publishers, sorted."""
    return registry.publishers()


def version_list(versions: Iterable[int]) -> str:
    """``(1, 2)`` as ``"v1, v2"``."""
    return ", ".join(f"v{v}" for v in versions)


def _edge_label(entry: CatalogEntry, publisher: str | None, subscriber: str | None) -> str:
    # The versions on an edge: those the publisher declared that the subscriber takes.
    versions = entry.versions_of(publisher) if publisher is not None else ()
    if not versions:
        return entry.name
    if subscriber is not None:
        mine = [s for s in entry.subscriptions if s.service == subscriber]
        versions = tuple(v for v in versions if any(s.accepts_version(v) for s in mine))
        if not versions:
            return f"{entry.name} (no version it accepts)"
    return f"{entry.name} {version_list(versions)}"


def _subscriber_json(subscription: Subscription) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "service": subscription.service,
        "handler": subscription.handler,
        "pattern": subscription.pattern,
        "queue": subscription.queue,
    }
    if subscription.versions:
        entry["versions"] = list(subscription.versions)
    return entry


def _declaration_json(declaration: RegisteredDeclaration) -> dict[str, Any]:
    return {
        "service": declaration.service,
        "version": declaration.version,
        "dataschema": declaration.dataschema,
        "compatibility": declaration.compatibility,
        "fingerprint": (
            None if declaration.schema is None else fingerprint_of(declaration.schema)
        ),
    }


def _by_service_and_version(declaration: RegisteredDeclaration) -> tuple[str, int]:
    return declaration.service, declaration.version or 0


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
