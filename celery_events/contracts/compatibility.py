"""Whether a new JSON Schema of an event keeps what the registered ones promised.

The modes are Confluent Schema Registry's: ``BACKWARD`` (the default: a subscriber reading with
the new schema can read every event written with the last one), ``FORWARD`` (a subscriber still
on the last schema can read events written with the new one), ``FULL`` (both), their
``_TRANSITIVE`` forms (against every schema registered for the name and version, not only the
last) and ``NONE``.

Each is built on one question, :func:`reader_breaks`: which documents valid under a
*writer's* schema may be refused by a *reader's*? Every answer is a :class:`Change` naming
where in the data, what changed, and why a document would break.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Change", "reader_breaks", "breaking_changes", "check_against"]


@dataclass(frozen=True)
class Change:
    """One way a schema change breaks the data of another schema."""

    #: Where in the data, as a dotted path (``"items[].price"``; ``""`` for the data itself).
    path: str
    #: A short, stable name of the kind of change: ``"type-narrowed"``,
    #: ``"required-added"``, ``"property-removed"``, ``"enum-narrowed"``, ``"maximum-lowered"``...
    kind: str
    #: A sentence for people: what changed, and which documents it breaks.
    description: str

    def __str__(self) -> str:
        return f"{self.path or '(the data)'}: {self.description}"


def reader_breaks(writer: dict[str, Any], reader: dict[str, Any]) -> list[Change]:
    """The ways a document valid under ``writer`` may be invalid under ``reader``; empty when
    every such document is valid under ``reader`` (as far as the keywords understood tell)."""
    raise NotImplementedError


def breaking_changes(old: dict[str, Any], new: dict[str, Any], mode: str) -> list[Change]:
    """What ``new`` breaks of ``old`` under ``mode`` (non-transitive reading: one old schema)."""
    raise NotImplementedError


def check_against(history: Sequence[dict[str, Any]], new: dict[str, Any], mode: str) -> list[Change]:
    """What ``new`` breaks under ``mode`` of the registered schemas ``history`` (oldest first):
    the last one for the plain modes, every one for the ``_TRANSITIVE`` forms, none for
    ``NONE``."""
    raise NotImplementedError
