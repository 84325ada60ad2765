"""Sensitive field paths and masking: pure functions on JSON data, used by the message
builder (once per event), the worker's masking strategy and :mod:`.sensitive`.

See :mod:`celery_events.trust.sensitive` for what a path names and who masks what.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..envelope import Event
from ..errors import ConfigurationError, shown

__all__ = [
    "SENSITIVE",
    "MASK",
    "ENCRYPTED_PREFIX",
    "check_paths",
    "paths_of",
    "transform",
    "mask_data",
    "mask_envelope",
    "is_encrypted",
    "still_encrypted",
]

#: The extension attribute that carries the publisher's sensitive paths, comma-separated.
SENSITIVE = "sensitive"
#: What a masked field shows.
MASK = "***"
#: How an encrypted field's value starts; then the key id, ``:`` and the base64 payload.
ENCRYPTED_PREFIX = "enc:v1:"

_SEGMENT_RE = re.compile(r"[^.,\s]+\Z")


# -- paths -------------------------------------------------------------------------------


def check_paths(paths: object, where: str) -> tuple[str, ...]:
    """``paths`` as a tuple of validated dotted paths, or a :class:`ConfigurationError`.

    ``where`` names the declaration in the message (``"@bus.subscribe('user.registered')"``).
    A path is dot-separated keys with no spaces or commas; one path inside another
    (``"address"`` and ``"address.street"``) is refused, since the outer one already covers
    it. Duplicates are dropped.

    >>> from celery_events.trust.fields import check_paths
    >>> check_paths(["email", "address.street"], "here")
    ('email', 'address.street')
    """
    if isinstance(paths, (str, bytes)) or not isinstance(paths, Iterable):
        raise ConfigurationError(
            f"{where}: sensitive= takes a list of field paths such as ['email',"
            f" 'address.street'], not {shown(paths)}."
        )
    found: list[str] = []
    for path in paths:
        if not isinstance(path, str) or not all(
            _SEGMENT_RE.match(part) for part in path.split(".")
        ):
            raise ConfigurationError(
                f"{where}: {shown(path)} is not a field path; a path is keys of the event's data"
                " joined by dots, without spaces or commas, such as 'address.street'."
            )
        if path not in found:
            found.append(path)
    for path in found:
        for other in found:
            if other != path and path.startswith(other + "."):
                raise ConfigurationError(
                    f"{where}: the sensitive field {path!r} is inside {other!r}, which already"
                    f" covers it; name only {other!r}."
                )
    return tuple(found)


def paths_of(envelope: Mapping[str, Any]) -> tuple[str, ...]:
    """The sensitive paths an envelope carries (its ``sensitive`` attribute); none if absent
    or not a string."""
    value = envelope.get(SENSITIVE)
    if not isinstance(value, str) or not value:
        return ()
    return tuple(p for p in value.split(",") if p)


Visit = Callable[[Any, str], Any]


def _apply(node: Any, segments: list[str], i: int, where: str, visit: Visit) -> Any:
    # ``node`` with ``visit(value, location)`` applied at the path; the very same object when
    # nothing changed, so that untouched data is never copied.
    if i == len(segments):
        return visit(node, where)
    if type(node) is list:
        items = [
            _apply(item, segments, i, f"{where}.{n}" if where else str(n), visit)
            for n, item in enumerate(node)
        ]
        if all(new is old for new, old in zip(items, node, strict=True)):
            return node
        return items
    if type(node) is not dict:
        return node
    key = segments[i]
    if key not in node:
        return node
    child = node[key]
    new = _apply(child, segments, i + 1, f"{where}.{key}" if where else key, visit)
    if new is child:
        return node
    copy = dict(node)
    copy[key] = new
    return copy


def transform(data: dict[str, Any], paths: Iterable[str], visit: Visit) -> dict[str, Any]:
    """``data`` with ``visit(value, location)`` in place of the value at each path; ``data``
    itself when no visit changed anything (the data is never changed in place)."""
    for path in paths:
        data = _apply(data, path.split("."), 0, "", visit)
    return data


def _masked(value: Any, where: str) -> str:
    return MASK


def mask_data(data: dict[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """A copy of ``data`` with ``"***"`` for the value at each path.

    >>> from celery_events.trust.fields import mask_data
    >>> mask_data({"email": "a@b.c", "cards": [{"no": 1}, {"no": 2}]}, ["email", "cards.no"])
    {'email': '***', 'cards': [{'no': '***'}, {'no': '***'}]}
    """
    return transform(data, paths, _masked)


def mask_envelope(envelope: dict[str, Any], paths: Iterable[str] = ()) -> dict[str, Any]:
    """``envelope`` with its data masked at its own sensitive paths and at ``paths``: what
    argument texts show. The same envelope when there is nothing to mask."""
    every = (*paths_of(envelope), *paths)
    data = envelope.get("data")
    if not every or type(data) is not dict:
        return envelope
    masked = mask_data(data, every)
    if masked is data:
        return envelope
    return {**envelope, "data": masked}


def is_encrypted(value: object) -> bool:
    """Whether ``value`` is a field encrypted by this module."""
    return type(value) is str and value.startswith(ENCRYPTED_PREFIX)


def still_encrypted(event: Event, paths: Iterable[str]) -> str | None:
    """The location of the first field at ``paths`` that still holds a ciphertext, or None."""
    found: list[str] = []

    def look(value: Any, where: str) -> Any:
        if is_encrypted(value):
            found.append(where)
        return value

    transform(event.data, paths, look)
    return found[0] if found else None
