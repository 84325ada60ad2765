"""A service's local declarations and handlers against what the fleet registered.

Two callers ask these questions: ``bus.register()`` (and so every worker at start and
``celery eventbus register``), which refuses to record a declaration whose schema breaks the
registered ones, and ``celery eventbus check``, which reports everything that would break,
for CI, against the registry or a committed contracts file (:mod:`.snapshot`).

What breaks (each answer is a :class:`Breaking`):

- **schema**: a local declaration's schema against every schema registered for the same name
  and *version*, by any service (oldest first), under the declaration's own compatibility
  mode (:func:`~celery_events.contracts.check_against`). A new version is never checked
  against another version: a breaking change is what a new version is for.
- **version removed**: a version this service registered and no longer declares, while a
  subscriber accepts only versions nobody declares any more: it would never get an event.
- **reader**: a local handler's accepted schema (``@bus.subscribe(..., schema=...)``) that
  cannot read what a registered publisher writes for a version the handler accepts.

Only the first is checked at register time; the other two are what the publisher or the
subscriber's CI should hear about before a deploy, and a running fleet may legitimately be in
the middle of a migration.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..declarations import Declaration
from ..errors import IncompatibleSchema
from ..names import pattern_matches
from ..registry import RegisteredDeclaration, Subscription
from .compatibility import Change, check_against, describe, reader_breaks
from .schemas import fingerprint_of

__all__ = [
    "Breaking",
    "registered_schemas",
    "schema_breaks",
    "removed_versions",
    "reader_problems",
    "breaking",
    "to_register",
    "with_history",
    "report",
]

#: The kinds of :class:`Breaking`.
SCHEMA, VERSION_REMOVED, READER = "schema", "version-removed", "reader"


@dataclass(frozen=True)
class Breaking:
    """One thing a local declaration or handler breaks, with the changes that show it."""

    #: The event name.
    name: str
    #: The version concerned, or ``None`` for an unversioned declaration.
    version: int | None
    #: :data:`SCHEMA`, :data:`VERSION_REMOVED` or :data:`READER`.
    kind: str
    #: A sentence for people: what breaks, and for whom.
    summary: str
    #: The schema changes behind it (none for a removed version).
    changes: tuple[Change, ...] = ()
    #: What to do about it, a sentence.
    fix: str = ""

    def to_json(self) -> dict[str, Any]:
        """As ``celery eventbus check --json`` prints it."""
        return {
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "summary": self.summary,
            "changes": [
                {"path": c.path, "kind": c.kind, "description": c.description}
                for c in self.changes
            ],
            "fix": self.fix,
        }


def registered_schemas(
    registered: Iterable[RegisteredDeclaration], name: str, version: int | None
) -> list[dict[str, Any]]:
    """Every schema registered for ``name`` and ``version`` by any service, oldest first
    (by ``registered_at``, then each record's own history order); a schema registered twice
    counts where it was registered last."""
    found: list[dict[str, Any]] = []
    for declaration in sorted(registered, key=lambda d: (d.registered_at, d.service)):
        if declaration.name == name and declaration.version == version:
            found.extend(declaration.schemas)
    latest: dict[str, int] = {}
    for position, schema in enumerate(found):
        latest[fingerprint_of(schema)] = position
    return [found[p] for p in sorted(latest.values())]


def schema_breaks(
    declarations: Iterable[Declaration], registered: Sequence[RegisteredDeclaration]
) -> list[Breaking]:
    """What each local declaration's schema breaks of the schemas registered for its name and
    version, under its compatibility mode."""
    found = []
    for declaration in declarations:
        if declaration.schema is None:
            continue
        history = registered_schemas(registered, declaration.name, declaration.version)
        if not history:
            continue
        changes = check_against(history, declaration.schema.document, declaration.compatibility)
        if not changes:
            continue
        publishers = sorted(
            {
                d.service
                for d in registered
                if d.name == declaration.name and d.version == declaration.version
            }
        )
        next_version = 1 + max(
            [d.version or 0 for d in registered if d.name == declaration.name]
            + [declaration.version or 0]
        )
        found.append(
            Breaking(
                declaration.name,
                declaration.version,
                SCHEMA,
                f"the schema breaks the one{'s' if len(history) > 1 else ''} registered (by"
                f" {', '.join(publishers)}) under {declaration.compatibility}",
                tuple(changes),
                f"Declare it as version {next_version}, or a new name, or"
                " compatibility='NONE'.",
            )
        )
    return found


def removed_versions(
    service: str,
    declarations: Iterable[Declaration],
    registered: Sequence[RegisteredDeclaration],
    subscriptions: Iterable[Subscription],
) -> list[Breaking]:
    """The versions ``service`` registered and no longer declares that a subscriber still
    needs: one whose ``versions`` are all declared by no one any more."""
    local: dict[str, set[int | None]] = {}
    for declaration in declarations:
        local.setdefault(declaration.name, set()).add(declaration.version)
    still: dict[str, set[int | None]] = {name: set(v) for name, v in local.items()}
    for other in registered:
        if other.service != service:
            still.setdefault(other.name, set()).add(other.version)
    subscriptions = list(subscriptions)
    found = []
    gone = sorted(
        {
            (d.name, d.version)
            for d in registered
            if d.service == service and d.version is not None
            and d.version not in local.get(d.name, set())
        }
    )
    for name, version in gone:
        for subscription in sorted(subscriptions, key=lambda s: s.handler):
            if (
                version not in subscription.versions
                or not pattern_matches(subscription.pattern, name)
                or any(subscription.accepts_version(v) for v in still.get(name, ()) if v)
            ):
                continue
            found.append(
                Breaking(
                    name,
                    version,
                    VERSION_REMOVED,
                    f"{name} v{version} is no longer declared, and {subscription.handler}"
                    f" accepts only {_versions(subscription.versions)}",
                    fix=f"Keep declaring {name} v{version} until {subscription.handler}"
                    " accepts a version still declared.",
                )
            )
    return found


def reader_problems(
    subscriptions: Iterable[Subscription], registered: Sequence[RegisteredDeclaration]
) -> list[Breaking]:
    """The local handlers whose accepted schema cannot read what a registered publisher
    writes for a version they accept."""
    found = []
    for subscription in subscriptions:
        if subscription.accepts is None:
            continue
        for declaration in registered:
            if (
                declaration.schema is None
                or not pattern_matches(subscription.pattern, declaration.name)
                or not subscription.accepts_version(declaration.version)
            ):
                continue
            changes = reader_breaks(declaration.schema, subscription.accepts)
            if changes:
                found.append(
                    Breaking(
                        declaration.name,
                        declaration.version,
                        READER,
                        f"{subscription.handler} cannot read what {declaration.service}"
                        " publishes",
                        tuple(changes),
                        f"Loosen {subscription.handler}'s schema, or accept only the versions"
                        " it reads (versions=[...]).",
                    )
                )
    return found


def breaking(
    service: str,
    declarations: Sequence[Declaration],
    subscriptions: Sequence[Subscription],
    registered: Sequence[RegisteredDeclaration],
    registered_subscriptions: Sequence[Subscription],
) -> list[Breaking]:
    """Everything ``service``'s local ``declarations`` and ``subscriptions`` break of what is
    registered (``celery eventbus check``), sorted by name and version."""
    found = [
        *schema_breaks(declarations, registered),
        *removed_versions(service, declarations, registered, registered_subscriptions),
        *reader_problems(subscriptions, [d for d in registered if d.service != service]),
    ]
    return sorted(found, key=lambda b: (b.name, b.version or 0))


def to_register(
    service: str, declarations: Iterable[Declaration], registered: Sequence[RegisteredDeclaration]
) -> list[RegisteredDeclaration]:
    """``service``'s ``declarations`` as its registry record holds them, each with its history
    (the schemas ``service`` registered before for the name and version, oldest first).

    Raises :class:`~celery_events.IncompatibleSchema` listing every declaration whose schema
    breaks the registered ones (:func:`schema_breaks`); then nothing should be recorded.
    """
    declarations = list(declarations)
    refused = schema_breaks(declarations, registered)
    if refused:
        raise IncompatibleSchema(
            f"Service {service!r} declares schemas that break the registered ones; nothing was"
            f" recorded.\n{report(refused)}",
            [change for b in refused for change in b.changes],
        )
    return with_history(service, declarations, registered)


def with_history(
    service: str, declarations: Iterable[Declaration], registered: Sequence[RegisteredDeclaration]
) -> list[RegisteredDeclaration]:
    """``service``'s ``declarations`` as its record holds them, each with the schemas
    ``service`` registered before for its name and version (in ``registered``: its current
    record's history and schema), once each, oldest first; no check."""
    own = {(d.name, d.version): d for d in registered if d.service == service}
    recorded = []
    for declaration in declarations:
        document = None if declaration.schema is None else declaration.schema.document
        before = own.get((declaration.name, declaration.version))
        recorded.append(
            RegisteredDeclaration(
                service=service,
                name=declaration.name,
                version=declaration.version,
                schema=document,
                compatibility=declaration.compatibility,
                dataschema=declaration.uri,
                history=() if before is None else _history(before.schemas, document),
                sensitive=declaration.sensitive,
            )
        )
    return recorded


def _history(
    schemas: Sequence[dict[str, Any]], current: dict[str, Any] | None
) -> tuple[dict[str, Any], ...]:
    """``schemas`` once each (by fingerprint, oldest first), without ``current``."""
    seen = set() if current is None else {fingerprint_of(current)}
    kept = []
    for schema in schemas:
        fingerprint = fingerprint_of(schema)
        if fingerprint not in seen:
            seen.add(fingerprint)
            kept.append(schema)
    return tuple(kept)


def report(found: Sequence[Breaking]) -> str:
    """``found`` for people, grouped by event name and version, like ``buf breaking``::

        order.created v1:
          the schema breaks the one registered (by orders) under BACKWARD
            - total: was a number and is now an integer: ... [type-narrowed]
          Declare it as version 2, or a new name, or compatibility='NONE'.
    """
    lines: list[str] = []
    groups: dict[tuple[str, int | None], list[Breaking]] = {}
    for item in found:
        groups.setdefault((item.name, item.version), []).append(item)
    for (name, version), items in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1] or 0)):
        lines.append(f"{name}{'' if version is None else f' v{version}'}:")
        for item in items:
            lines.append(f"  {item.summary}")
            # describe()'s own heading repeats the group's, so only its change lines are kept.
            diff = describe(item.changes, name, version).splitlines()[1:] if item.changes else []
            lines.extend(f"  {line}" for line in diff)
            if item.fix:
                lines.append(f"    {item.fix}")
    return "\n".join(lines)


def _versions(versions: Sequence[int]) -> str:
    return ", ".join(f"v{v}" for v in versions)
