"""What a service says about the events it publishes: ``bus.declare(name, ...)``.

A declaration is made once per event name and version, at import time, next to the code that
publishes it. It names the event's schema (a JSON Schema or a pydantic model), its version,
the compatibility mode later schemas of that version are held to, and its sensitive fields.
Declarations are recorded in the registry with the service's subscriptions (at worker start,
and by ``celery eventbus register``), which is how subscribers, ``celery eventbus check`` and
``celery eventbus spec`` learn them without importing the publisher's code.

Each event of a declared name carries the CloudEvents ``dataschema`` attribute naming its
schema and version: ``urn:celery-events:schema:{name}:{version}`` unless the declaration gives
its own URI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .contracts.schemas import Schema

__all__ = ["Declaration", "COMPATIBILITY_MODES", "dataschema_uri", "version_in"]

#: The compatibility modes a declaration may name (as Confluent's Schema Registry names them):
#: what a new schema of a name and version must keep of the ones registered before it.
COMPATIBILITY_MODES = (
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
    "NONE",
)

_URN_PREFIX = "urn:celery-events:schema:"
_URN_RE = re.compile(r"urn:celery-events:schema:(?P<name>[^:]+):(?P<version>[1-9][0-9]*)\Z")


def dataschema_uri(name: str, version: int) -> str:
    """The ``dataschema`` of version ``version`` of event ``name`` when its declaration gives
    none: ``urn:celery-events:schema:order.created:2``."""
    return f"{_URN_PREFIX}{name}:{version}"


def version_in(name: str, dataschema: str | None) -> int | None:
    """The version a ``dataschema`` made by :func:`dataschema_uri` names for event ``name``;
    ``None`` for any other (or none)."""
    if not dataschema or not dataschema.startswith(_URN_PREFIX):
        return None
    found = _URN_RE.match(dataschema)
    if found is None or found["name"] != name:
        return None
    return int(found["version"])


@dataclass(frozen=True)
class Declaration:
    """One event name (and version) this service publishes, as ``bus.declare`` made it.

    >>> from celery import Celery
    >>> from pydantic import BaseModel
    >>> from celery_events import EventBus
    >>> class UserRegistered(BaseModel):
    ...     user_id: int
    >>> bus = EventBus(Celery("users", broker="memory://"), service="users")
    >>> bus.declare("user.registered", schema=UserRegistered, version=2)
    Declaration(name='user.registered', sensitive=(), schema=<Schema ...>, version=2, compatibility='BACKWARD', uri=None)
    """

    #: The event name (exact, not a pattern).
    name: str
    #: Dotted paths of the data's sensitive fields: masked in every argument text, encrypted
    #: when the service has ``encryption_keys``; they travel with each event as its
    #: ``sensitive`` extension attribute, so subscribers mask and decrypt the same ones.
    sensitive: tuple[str, ...] = ()
    #: The schema events of this version are validated against (at publish, and on receipt),
    #: or ``None``: any JSON object.
    schema: Schema | None = field(default=None, compare=False)
    #: The version, a whole number from 1; ``None`` for a declaration without a schema.
    version: int | None = None
    #: What a later schema of this name and version must keep of the registered ones (one of
    #: :data:`COMPATIBILITY_MODES`).
    compatibility: str = "BACKWARD"
    #: The ``dataschema`` URI given to ``bus.declare``, or ``None`` for :func:`dataschema_uri`.
    uri: str | None = None
    # The schema's fingerprint, so that two declarations compare equal when their schemas do.
    fingerprint: str | None = field(default=None, repr=False)

    @property
    def dataschema(self) -> str | None:
        """The ``dataschema`` attribute of this declaration's events (``None`` when it has no
        version)."""
        if self.uri is not None:
            return self.uri
        return None if self.version is None else dataschema_uri(self.name, self.version)

    def to_json(self) -> dict[str, Any]:
        """The declaration as the registry records it (without the schema history)."""
        entry: dict[str, Any] = {"name": self.name}
        if self.version is not None:
            entry["version"] = self.version
        if self.schema is not None:
            entry["schema"] = self.schema.document
            entry["compatibility"] = self.compatibility
        if self.uri is not None:
            entry["dataschema"] = self.uri
        if self.sensitive:
            entry["sensitive"] = list(self.sensitive)
        return entry
