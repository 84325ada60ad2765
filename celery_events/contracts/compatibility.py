"""Whether a new JSON Schema of an event keeps what the registered ones promised.

The modes are Confluent Schema Registry's: ``BACKWARD`` (the default: a subscriber reading with
the new schema can read every event written with the last one), ``FORWARD`` (a subscriber still
on the last schema can read events written with the new one), ``FULL`` (both), their
``_TRANSITIVE`` forms (against every schema registered for the name and version, not only the
last) and ``NONE``.

Each is built on one question, :func:`reader_breaks`: which documents valid under a
*writer's* schema may be refused by a *reader's*? Every answer is a :class:`Change` naming
where in the data, what changed, and why a document would break.

What the answer promises: when :func:`reader_breaks` finds nothing, every document valid under
the writer's schema (draft 2020-12) is valid under the reader's, with one deliberate leniency
below. It never claims more than it can show: a keyword it does not understand
(``if``/``then``/``else``, ``patternProperties``, ``dependentSchemas``, ``contains``...) that is
not the same on both sides is a change of kind ``unknown-keyword-changed`` (unless only the
writer has it and it can only refuse documents, as ``propertyNames`` can), and a ``oneOf`` whose
branches it cannot prove apart is one of kind ``one-of-ambiguous``. Annotations (``title``,
``description``, ``default``, ``examples``, ``deprecated``...) never break anything. ``format``
is read as an assertion (a reader that adds or changes one breaks), although draft 2020-12
validators only annotate it by default.

The leniency: a property that one side declares and an *open* object of the other side (one
without ``additionalProperties``) does not, is taken as absent from the open side's documents.
Adding an optional property (a new pydantic field with a default) is thereby compatible both
ways, and so is removing one from an open object; a strict reading would refuse both, since an
open object's writer may already have sent that name with any value (Confluent reports it as
``PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL``), and the most common evolution of an event would
always be refused. A *closed* object (``additionalProperties: false``) gets no such leniency.

>>> from celery_events.contracts import breaking_changes
>>> old = {"type": "object", "properties": {"total": {"type": "number"}}}
>>> new = {"type": "object", "properties": {"total": {"type": "integer"}}}
>>> [change.kind for change in breaking_changes(old, new, "BACKWARD")]
['type-narrowed']
>>> breaking_changes(old, new, "FORWARD")
[]
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from ..declarations import COMPATIBILITY_MODES

__all__ = ["Change", "reader_breaks", "breaking_changes", "check_against", "describe"]



@dataclass(frozen=True)
class Change:
    """One way a schema change breaks the data of another schema.

    ``kind`` names what the *reading* schema does to documents of the *writing* one
    (``type-narrowed``: the reader takes fewer types than the writer sends), so one kind means
    one thing in every mode; ``description`` tells it in time order (what the field was, what
    it is now) and who refuses what.
    """

    #: Where in the data, as a dotted path (``"items[].price"``; ``""`` for the data itself).
    path: str
    #: A short, stable name of the kind of change: ``"type-narrowed"``,
    #: ``"required-added"``, ``"property-removed"``, ``"enum-narrowed"``, ``"maximum-lowered"``...
    kind: str
    #: A sentence for people: what changed, and which documents it breaks.
    description: str

    def __str__(self) -> str:
        return f"{self.path or '(the data)'}: {self.description}"

    def to_json(self) -> dict[str, str]:
        """The change as JSON data: ``{"path": ..., "kind": ..., "description": ...}``."""
        return {"path": self.path, "kind": self.kind, "description": self.description}


def reader_breaks(writer: dict[str, Any], reader: dict[str, Any]) -> list[Change]:
    """The ways a document valid under ``writer`` may be invalid under ``reader``; empty when
    every such document is valid under ``reader`` (as far as the keywords understood tell).

    >>> from celery_events.contracts import reader_breaks
    >>> reader_breaks({"type": "integer"}, {"type": "number"})
    []
    >>> [c.kind for c in reader_breaks({"type": "number"}, {"type": "integer"})]
    ['type-narrowed']
    """
    return _Comparison(writer, reader, _Wording(None)).changes()


def breaking_changes(old: dict[str, Any], new: dict[str, Any], mode: str) -> list[Change]:
    """What ``new`` breaks of ``old`` under ``mode`` (non-transitive reading: one old schema).

    ``BACKWARD``: subscribers reading with ``new`` must read events written with ``old``;
    ``FORWARD``: subscribers still reading with ``old`` must read events written with ``new``;
    ``FULL``: both; ``NONE``: nothing. A ``_TRANSITIVE`` mode reads as its plain form here.
    Raises :class:`ValueError` for another mode.
    """
    plain, _ = _mode(mode)
    found: list[Change] = []
    if plain in ("BACKWARD", "FULL"):
        found += _Comparison(old, new, _Wording(writer_is_old=True)).changes()
    if plain in ("FORWARD", "FULL"):
        found += _Comparison(new, old, _Wording(writer_is_old=False)).changes()
    return _unique(found)


def check_against(history: Sequence[dict[str, Any]], new: dict[str, Any], mode: str) -> list[Change]:
    """What ``new`` breaks under ``mode`` of the registered schemas ``history`` (oldest first):
    the last one for the plain modes, every one for the ``_TRANSITIVE`` forms, none for
    ``NONE``. A change found against several schemas is listed once.

    >>> from celery_events.contracts import check_against
    >>> v1 = {"type": "object", "properties": {"note": {"type": "string"}}}
    >>> v2 = {"type": "object", "properties": {}}                   # note dropped
    >>> v3 = {"type": "object", "properties": {"note": {"type": "integer"}}}
    >>> check_against([v1, v2], v3, "BACKWARD")
    []
    >>> [c.kind for c in check_against([v1, v2], v3, "BACKWARD_TRANSITIVE")]
    ['type-changed']
    """
    plain, transitive = _mode(mode)
    against = list(history) if transitive else list(history)[-1:]
    found: list[Change] = []
    for old in against:
        found += breaking_changes(old, new, plain)
    return _unique(found)


def describe(changes: Sequence[Change], name: str, version: int | None, mode: str | None = None) -> str:
    """``changes`` as a readable diff, one line per change, headed by the event's name and
    version (and the mode, when given)::

        order.created v1: 2 breaking changes under BACKWARD
          - total: was a number and is now an integer: subscribers on the new schema refuse
            an event with total 9.5 [type-narrowed]
          + customer_id: was not a property and is now required: subscribers on the new
            schema refuse events without customer_id [required-added]

    ``+`` marks something the reading schema added (a required property, a bound), ``-``
    something it took away (a type, an enum value, a property) and ``~`` something changed.
    """
    title = f"{name} v{version}" if version is not None else name
    count = len(changes)
    under = f" under {mode}" if mode else ""
    if not count:
        return f"{title}: no breaking changes{under}"
    lines = [f"{title}: {count} breaking change{'s' if count != 1 else ''}{under}"]
    for change in changes:
        where = _where(change.path)
        text = change.description.removeprefix(f"{where} ")
        lines.append(f"  {_sign(change.kind)} {where}: {text} [{change.kind}]")
    return "\n".join(lines)


def _sign(kind: str) -> str:
    if kind.endswith(("-added", "-raised", "-closed")):
        return "+"
    if kind.endswith(("-narrowed", "-lowered", "-uncovered", "-refused")) or "-removed" in kind:
        return "-"
    return "~"


def _mode(mode: str) -> tuple[str, bool]:
    if mode not in COMPATIBILITY_MODES:
        raise ValueError(
            f"{mode!r} is not a compatibility mode; use one of {', '.join(COMPATIBILITY_MODES)}."
        )
    transitive = mode.endswith("_TRANSITIVE")
    return mode.removesuffix("_TRANSITIVE"), transitive


def _unique(changes: Iterable[Change]) -> list[Change]:
    return list(dict.fromkeys(changes))


# Keywords that only annotate: they never make a document invalid.
_ANNOTATIONS = frozenset(
    {
        "title", "description", "default", "examples", "$comment", "deprecated", "readOnly",
        "writeOnly", "$schema", "$id", "$anchor", "$vocabulary", "contentEncoding",
        "contentMediaType", "contentSchema", "$defs", "definitions",
        # OpenAPI's (pydantic writes it next to a oneOf): JSON Schema validators ignore it.
        "discriminator",
    }
)
# Keywords this module reads; any other keyword is compared for equality (a ``$ref`` too,
# once resolved references are replaced: one left is one that cannot be followed).
_UNDERSTOOD = frozenset(
    {
        "type", "enum", "const", "properties", "required", "additionalProperties",
        "minProperties", "maxProperties", "items", "prefixItems", "minItems", "maxItems",
        "uniqueItems", "minLength", "maxLength", "pattern", "format", "minimum", "maximum",
        "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "anyOf", "oneOf", "allOf", "not",
    }
)
# Keywords not understood that only ever refuse documents, whatever their siblings say: a
# writer may have them where the reader does not (its documents are then fewer, never more).
# Not so patternProperties (it exempts names from additionalProperties) nor minContains (0
# lifts contains).
_ONLY_RESTRICTING = frozenset(
    {
        "propertyNames", "dependentRequired", "dependentSchemas", "unevaluatedProperties",
        "unevaluatedItems", "contains", "maxContains", "if", "then", "else",
    }
)
_TYPES = ("null", "boolean", "object", "array", "number", "string")
_A_TYPE = {
    "null": "null",
    "boolean": "a boolean",
    "object": "an object",
    "array": "an array",
    "number": "a number",
    "integer": "an integer",
    "string": "a string",
}
# A value of each type, for "an event with total 9.5 is refused".
_SAMPLE: dict[str, Any] = {
    "null": None,
    "boolean": True,
    "object": {},
    "array": [],
    "number": 9.5,
    "integer": 7,
    "string": "text",
}
# Deeper than any event schema nests: past it, a recursive schema is not compared further.
_DEEPEST = 64


@dataclass(frozen=True)
class _Wording:
    """Says a change in time order: ``writer_is_old`` for BACKWARD (the old schema wrote the
    events), False for FORWARD, None for a plain writer and reader."""

    writer_is_old: bool | None

    def shift(self, writer: str, reader: str) -> str:
        if self.writer_is_old is None:
            return f"is {writer} for the writer and {reader} for the reader"
        old, new = (writer, reader) if self.writer_is_old else (reader, writer)
        return f"was {old} and is now {new}"

    @property
    def refuse(self) -> str:
        if self.writer_is_old is None:
            return "the reader refuses"
        if self.writer_is_old:
            return "subscribers on the new schema refuse"
        return "subscribers still on the old schema refuse"

    @property
    def reading(self) -> str:
        if self.writer_is_old is None:
            return "the reader's schema"
        return "the new schema" if self.writer_is_old else "the old schema"

    @property
    def writing(self) -> str:
        if self.writer_is_old is None:
            return "the writer's schema"
        return "the old schema" if self.writer_is_old else "the new schema"


class _Comparison:
    """One writer schema against one reader schema, each with its own root for ``$ref``."""

    def __init__(self, writer: Any, reader: Any, wording: _Wording) -> None:
        self.wroot = writer
        self.rroot = reader
        self.say = wording
        # Pairs of (writer, reader) nodes being compared: a recursive schema meets them again
        # and is taken as compatible there (documents are finite, so this is sound).
        self._open: set[tuple[int, int]] = set()
        self._validators: dict[tuple[int, bool, str], Any] = {}

    def changes(self) -> list[Change]:
        return _unique(self.compare(self.wroot, self.rroot, "", 0))

    # -- building blocks ---------------------------------------------------------------

    def change(self, path: str, kind: str, text: str) -> Change:
        return Change(path, kind, f"{_where(path)} {text}")

    def resolve(self, schema: Any, root: Any) -> Any:
        """``schema`` with a local ``$ref`` replaced by its target (siblings kept as an
        ``allOf``); an unresolvable ``$ref`` stays, to be compared as it is written."""
        for _ in range(_DEEPEST):
            if not isinstance(schema, dict) or not isinstance(schema.get("$ref"), str):
                return schema
            target = _pointer(root, schema["$ref"])
            if target is _MISSING:
                return schema
            rest = {k: v for k, v in schema.items() if k != "$ref" and k not in _ANNOTATIONS}
            schema = target if not rest else {"allOf": [target, rest]}
        return schema

    # -- the comparison ----------------------------------------------------------------

    def compare(self, writer: Any, reader: Any, path: str, depth: int) -> list[Change]:
        w = self.resolve(writer, self.wroot)
        r = self.resolve(reader, self.rroot)
        if r is True or (isinstance(r, dict) and not _constraining(r)):
            return []
        if w is False:
            return []
        if w is True:
            w = {}
        if r is False:
            return [self.change(path, "schema-false", f"is refused whatever it is by {self.say.reading}")]
        if not isinstance(w, dict) or not isinstance(r, dict):
            return [self.change(path, "unknown-keyword-changed", "is not described by a JSON Schema on both sides")]
        key = (id(w), id(r))
        if key in self._open:
            return []
        # The same schema on both sides (references followed) takes the same documents.
        if _expanded(w, self.wroot) == _expanded(r, self.rroot):
            return []
        if depth > _DEEPEST:
            return [self.change(path, "too-deep", f"nests deeper than {_DEEPEST} levels and was not compared")]
        self._open.add(key)
        try:
            return self._compare(w, r, path, depth + 1)
        finally:
            self._open.discard(key)

    def _compare(self, w: dict[str, Any], r: dict[str, Any], path: str, depth: int) -> list[Change]:
        # The writer's composition first: each document it sends matches one of its branches.
        if "allOf" in w:
            merged: Any = _without(w, "allOf")
            for part in w["allOf"]:
                merged = _meet(merged, self.resolve(part, self.wroot))
            return self.compare(merged, r, path, depth)
        for union in ("anyOf", "oneOf"):
            if union in w:
                # The branch's own title names it, not the union's.
                base = {k: v for k, v in w.items() if k != union and k not in _ANNOTATIONS}
                branches = [_meet(base, self.resolve(branch, self.wroot)) for branch in w[union]]
                found = self._lost_branches(branches, r, path)
                narrowed = bool(found)
                for branch in branches:
                    if not narrowed or _taken(branch, r):
                        found += self.compare(branch, r, path, depth)
                return found
        # Then the reader's: every part of an allOf must hold, one branch of a union must.
        if "allOf" in r:
            found = self.compare(w, _without(r, "allOf"), path, depth)
            for part in r["allOf"]:
                found += self.compare(w, part, path, depth)
            return found
        if "anyOf" in r or "oneOf" in r:
            found = self.compare(w, _without(r, "anyOf", "oneOf"), path, depth)
            for union in ("anyOf", "oneOf"):
                if union in r:
                    found += self._covered(w, r[union], union == "oneOf", path, depth)
            return found
        found = []
        if "not" in r:
            found += self._not(w, r["not"], path)
            r = _without(r, "not")
        return found + self._simple(w, r, path, depth)

    def _lost_branches(self, branches: list[Any], r: dict[str, Any], path: str) -> list[Change]:
        """A writer's union of which the reader takes some branches' types and not others'
        (an ``Optional`` made required) as one narrowed type, not one change a branch."""
        lost = [branch for branch in branches if not _taken(branch, r)]
        if not lost or len(lost) == len(branches):
            return []
        sent: set[str] = set()
        for branch in branches:
            sent |= _types(branch) or set()
        tr = _types(r) or set()
        sample = next(t for t in sorted(_types(lost[0]) or ()) if not _accepts(tr, t))
        return [self.change(
            path, "type-narrowed",
            f"{self.say.shift(_a_types(sent), _a_types(tr))}: {self.say.refuse} an event with"
            f" {_name(path)} {_show(_SAMPLE[sample])}",
        )]

    def _covered(self, w: dict[str, Any], branches: list[Any], one: bool, path: str, depth: int) -> list[Change]:
        """Whether each document of ``w`` matches a branch (exactly one, for a oneOf)."""
        found: list[Change] = []
        for part in _by_type(w):
            trials = [self.compare(part, branch, path, depth) for branch in branches]
            fits = [i for i, trial in enumerate(trials) if not trial]
            if fits:
                if one and not all(
                    i == fits[0] or self._disjoint(part, self.resolve(branch, self.rroot))
                    for i, branch in enumerate(branches)
                ):
                    found.append(self.change(
                        path, "one-of-ambiguous",
                        f"may match more than one branch of a oneOf in {self.say.reading}, which"
                        " refuses a document matching two",
                    ))
                continue
            # Report the closest branch of the same type, so that a change inside an
            # Optional[Model] is named where it is (address.street), not as a lost branch.
            # A branch apart from it (another type, another discriminator) is not near.
            near: list[list[Change]] = [
                trials[i] for i, branch in enumerate(branches) if not self._apart(part, branch)
            ]
            if near:
                closest: list[Change] = min(near, key=len)
                found += closest
            else:
                types = _types(part)
                what = _a_types(types) if types is not None else "a value"
                if isinstance(part.get("title"), str):
                    what += f" ({part['title']})"
                found.append(self.change(
                    path, "union-branch-uncovered",
                    f"may be {what} in {self.say.writing}, which no branch of the union in"
                    f" {self.say.reading} takes: {self.say.refuse} such an event",
                ))
        return found

    def _apart(self, part: dict[str, Any], branch: Any) -> bool:
        """Whether a reader's union branch is for other documents than the writer's ``part``:
        other types, or another value of a property that tells them apart (``pet_type``)."""
        branch = self.resolve(branch, self.rroot)
        if not isinstance(branch, dict):
            return branch is False
        types = _types(part)
        if types is not None and not _overlap(types, _types(branch)):
            return True
        w_props, r_props = part.get("properties", {}), branch.get("properties", {})
        for name in part.get("required", []):
            if name not in w_props or name not in r_props:
                continue
            told = self.resolve(r_props[name], self.rroot)
            if isinstance(told, dict) and ("const" in told or "enum" in told):
                if self._disjoint(w_props[name], told):
                    return True
        return False

    def _not(self, w: dict[str, Any], negated: Any, path: str) -> list[Change]:
        if "not" in w and _expanded(w["not"], self.wroot) == _expanded(negated, self.rroot):
            return []
        if self._disjoint(w, self.resolve(negated, self.rroot)):
            return []
        return [self.change(
            path, "not-changed",
            f"must not match a schema in {self.say.reading} that documents of"
            f" {self.say.writing} may match",
        )]

    def _disjoint(self, a: Any, b: Any, depth: int = 0) -> bool:
        """Whether no document is valid under both writer node ``a`` and reader node ``b``
        (False when it cannot tell)."""
        a = self.resolve(a, self.wroot)
        b = self.resolve(b, self.rroot)
        if a is False or b is False:
            return True
        if not isinstance(a, dict) or not isinstance(b, dict) or depth > 8:
            return False
        values = self.writer_values(a)
        if values is not None:
            return not any(self.valid(value, b, self.rroot) for value in values)
        for union in ("anyOf", "oneOf"):
            if union in b:
                return all(self._disjoint(a, branch, depth + 1) for branch in b[union])
        ta, tb = _types(a), _types(b)
        if ta is not None and tb is not None and not _overlap(ta, tb):
            return True
        # Two objects apart by a property that the writer always sends (a discriminator).
        a_props, b_props = a.get("properties", {}), b.get("properties", {})
        for name in a.get("required", []):
            if name in a_props and name in b_props and self._disjoint(a_props[name], b_props[name], depth + 1):
                return True
        return False

    # -- one writer node against one reader node, neither composed -----------------------

    def _simple(self, w: dict[str, Any], r: dict[str, Any], path: str, depth: int) -> list[Change]:
        found: list[Change] = []
        for keyword in sorted((w.keys() | r.keys()) - _UNDERSTOOD - _ANNOTATIONS):
            if keyword not in r and keyword in _ONLY_RESTRICTING and not (
                keyword == "contains" and "minContains" in w
            ):
                continue
            if _expanded(w.get(keyword, _MISSING), self.wroot) != _expanded(r.get(keyword, _MISSING), self.rroot):
                found.append(self.change(
                    path, "unknown-keyword-changed",
                    f"has a {keyword!r} that is not the same in both schemas (it is"
                    f" {_short(w.get(keyword, _MISSING))} in {self.say.writing} and"
                    f" {_short(r.get(keyword, _MISSING))} in {self.say.reading}), and whether"
                    " that breaks anything is not known",
                ))
        values = self.writer_values(w)
        if values is None and ("enum" in r or "const" in r):
            values = _few_values(w)
        if values is not None:
            return found + self._values(values, r, path)
        if "const" in r:
            found.append(self.change(
                path, "const-added",
                f"{self.say.shift(_any(w), 'fixed to ' + _short(r['const']))}:"
                f" {self.say.refuse} any other value",
            ))
        if "enum" in r:
            found.append(self.change(
                path, "enum-added",
                f"{self.say.shift(_any(w), 'one of ' + _short(r['enum']))}:"
                f" {self.say.refuse} any other value",
            ))
        found += self._type(w, r, path)
        live = _live(w, r)
        if live & {"integer", "number"}:
            found += self._numbers(w, r, path, integral="number" not in live)
        if "string" in live:
            found += self._strings(w, r, path)
        if "array" in live:
            found += self._arrays(w, r, path, depth)
        if "object" in live:
            found += self._objects(w, r, path, depth)
        return found

    def _type(self, w: dict[str, Any], r: dict[str, Any], path: str) -> list[Change]:
        tw, tr = _types(w), _types(r)
        if tr is None:
            return []
        if tw is None:
            return [self.change(
                path, "type-narrowed",
                f"{self.say.shift('any value', _a_types(tr))}: {self.say.refuse} an event with"
                f" {_name(path)} {_show(_SAMPLE[_other(tr)])}",
            )]
        lost = [t for t in sorted(tw) if not _accepts(tr, t)]
        if not lost:
            return []
        kind = "type-narrowed" if len(lost) < len(tw) or _overlap(set(tw), tr) else "type-changed"
        return [self.change(
            path, kind,
            f"{self.say.shift(_a_types(tw), _a_types(tr))}: {self.say.refuse} an event with"
            f" {_name(path)} {_show(_SAMPLE[lost[0]])}",
        )]

    def _values(self, values: list[Any], r: dict[str, Any], path: str) -> list[Change]:
        """The writer sends only ``values``: each must be valid for the reader."""
        refused = [value for value in values if not self.valid(value, r, self.rroot)]
        if not refused:
            return []
        shown = ", ".join(_show(value) for value in refused)
        if "const" in r and len(values) == 1:
            return [self.change(
                path, "const-changed",
                f"{self.say.shift(_show(values[0]), _show(r['const']))}: {self.say.refuse} an"
                f" event with {_name(path)} {shown}",
            )]
        if "enum" in r or "const" in r:
            allowed = r["enum"] if "enum" in r else [r["const"]]
            if any(not _contains(allowed, value) for value in refused):
                return [self.change(
                    path, "enum-narrowed",
                    f"{self.say.shift('one of ' + _short(values), 'one of ' + _short(allowed))}:"
                    f" {self.say.refuse} an event with {_name(path)} {shown}",
                )]
        return [self.change(
            path, "value-refused",
            f"may be {shown} in {self.say.writing}, which {self.say.reading} refuses:"
            f" {self.say.refuse} such an event",
        )]

    def _numbers(self, w: dict[str, Any], r: dict[str, Any], path: str, integral: bool) -> list[Change]:
        found: list[Change] = []
        for side, label in ((_lower, "minimum"), (_upper, "maximum")):
            wb, rb = side(w, integral), side(r, integral)
            if rb is None:
                continue
            above = label == "minimum"
            if wb is None:
                found.append(self.change(
                    path, f"{label}-added",
                    f"{self.say.shift('unbounded', 'at ' + ('least ' if above else 'most ') + _bound(rb))}:"
                    f" {self.say.refuse} an event with {_name(path)} {_beyond(rb, above, integral)}",
                ))
            elif not _within(wb, rb, above):
                found.append(self.change(
                    path, "minimum-raised" if above else "maximum-lowered",
                    f"{self.say.shift(('at least ' if above else 'at most ') + _bound(wb), ('at least ' if above else 'at most ') + _bound(rb))}:"
                    f" {self.say.refuse} an event with {_name(path)} {_beyond(rb, above, integral)}",
                ))
        if "multipleOf" in r and not _divides(r["multipleOf"], w.get("multipleOf"), integral):
            before = f"a multiple of {_show(w['multipleOf'])}" if "multipleOf" in w else "any number"
            found.append(self.change(
                path, "multiple-of-changed",
                f"{self.say.shift(before, 'a multiple of ' + _show(r['multipleOf']))}:"
                f" {self.say.refuse} other numbers",
            ))
        return found

    def _strings(self, w: dict[str, Any], r: dict[str, Any], path: str) -> list[Change]:
        found = self._counts(w, r, path, "minLength", "maxLength", "length", "characters")
        if "pattern" in r and w.get("pattern") != r["pattern"]:
            before = f"matched by {w['pattern']!r}" if "pattern" in w else "any string"
            found.append(self.change(
                path, "pattern-changed" if "pattern" in w else "pattern-added",
                f"{self.say.shift(before, 'matched by ' + repr(r['pattern']))}: {self.say.refuse}"
                " strings it does not match",
            ))
        if "format" in r and w.get("format") != r["format"]:
            before = f"of format {w['format']!r}" if "format" in w else "of no format"
            found.append(self.change(
                path, "format-changed" if "format" in w else "format-added",
                f"{self.say.shift(before, 'of format ' + repr(r['format']))}: {self.say.refuse}"
                " strings not of that format",
            ))
        return found

    def _counts(
        self, w: dict[str, Any], r: dict[str, Any], path: str, low: str, high: str, what: str,
        unit: str, w_low: int = 0, w_high: float = math.inf,
    ) -> list[Change]:
        """The ``minLength``/``maxLength`` pairs (of strings, arrays, objects)."""
        found: list[Change] = []
        words = {"minLength": "min-length", "maxLength": "max-length", "minItems": "min-items",
                 "maxItems": "max-items", "minProperties": "min-properties",
                 "maxProperties": "max-properties"}
        wl = max(w.get(low, 0), w_low)
        if r.get(low, 0) > wl:
            found.append(self.change(
                path, words[low] + ("-raised" if low in w else "-added"),
                f"{self.say.shift(f'at least {wl} {unit}', f'at least {r[low]} {unit}')}:"
                f" {self.say.refuse} an event whose {_name(path)} has fewer",
            ))
        wh = min(w.get(high, math.inf), w_high)
        if high in r and r[high] < wh:
            before = f"at most {_show(wh)} {unit}" if wh != math.inf else f"of any {what}"
            found.append(self.change(
                path, words[high] + ("-lowered" if wh != math.inf else "-added"),
                f"{self.say.shift(before, f'at most {r[high]} {unit}')}:"
                f" {self.say.refuse} an event whose {_name(path)} has more",
            ))
        return found

    def _arrays(self, w: dict[str, Any], r: dict[str, Any], path: str, depth: int) -> list[Change]:
        wp, rp = w.get("prefixItems", []), r.get("prefixItems", [])
        wi = self.resolve(w.get("items", True), self.wroot)
        ri = r.get("items", r.get("unevaluatedItems", True))
        longest: float = w.get("maxItems", math.inf)
        if wi is False:
            longest = min(longest, len(wp))
        found = self._counts(w, r, path, "minItems", "maxItems", "length", "items", w_high=longest)
        fixed = max(len(wp), len(rp))
        for i in range(fixed):
            if i >= longest:
                break
            found += self.compare(
                wp[i] if i < len(wp) else wi, rp[i] if i < len(rp) else ri, f"{path}[{i}]", depth
            )
        if longest > fixed:
            found += self.compare(wi, ri, f"{path}[]", depth)
        if r.get("uniqueItems") and not w.get("uniqueItems") and longest > 1:
            found.append(self.change(
                path, "unique-items-added",
                f"{self.say.shift('a list that may repeat items', 'a list of unique items')}:"
                f" {self.say.refuse} an event whose {_name(path)} repeats an item",
            ))
        return found

    def _objects(self, w: dict[str, Any], r: dict[str, Any], path: str, depth: int) -> list[Change]:
        found: list[Change] = []
        w_props: dict[str, Any] = w.get("properties", {})
        r_props: dict[str, Any] = r.get("properties", {})
        w_required, r_required = set(w.get("required", [])), list(r.get("required", []))
        w_extra = w.get("additionalProperties", _MISSING)
        r_extra = r.get("additionalProperties", r.get("unevaluatedProperties", True))
        for name in r_required:
            if name not in w_required:
                before = "optional" if name in w_props else "not a property"
                found.append(self.change(
                    _join(path, name), "required-added",
                    f"{self.say.shift(before, 'required')}: {self.say.refuse} events without"
                    f" {_name(_join(path, name))}",
                ))
        for name in dict.fromkeys([*w_props, *r_props]):
            where = _join(path, name)
            if name in w_props and name in r_props:
                found += self.compare(w_props[name], r_props[name], where, depth)
            elif name in w_props:
                if self.resolve(r_extra, self.rroot) is False:
                    found.append(self.change(
                        where, "property-removed-closed",
                        f"{self.say.shift('a property', 'not a property of a closed object')}:"
                        f" {self.say.refuse} an event with {_name(where)}",
                    ))
                else:
                    found += self.compare(w_props[name], r_extra, where, depth)
            else:
                # Declared by the reader only: the writer sends it as an additional property,
                # or (an open object, the leniency in the module docstring) not at all, unless
                # it requires it without saying what it is.
                extra = True if w_extra is _MISSING and name in w_required else w_extra
                for sent in self._extra_schemas(w, name, extra):
                    found += self.compare(sent, r_props[name], where, depth)
        if self.resolve(w_extra, self.wroot) is not False:
            if self.resolve(r_extra, self.rroot) is False:
                found.append(self.change(
                    path, "additional-properties-closed",
                    f"{self.say.shift('an open object', 'a closed one')}: {self.say.refuse} an"
                    " event with a property it does not list",
                ))
            else:
                found += self.compare(True if w_extra is _MISSING else w_extra, r_extra, _join(path, "*"), depth)
        closed = self.resolve(w_extra, self.wroot) is False and "patternProperties" not in w
        found += self._counts(
            w, r, path, "minProperties", "maxProperties", "size", "properties",
            w_low=len(w_required), w_high=len(w_props) if closed else math.inf,
        )
        return found

    def _extra_schemas(self, w: dict[str, Any], name: str, w_extra: Any) -> list[Any]:
        """What the writer may send as ``name`` when it does not list it."""
        sent = [
            schema for pattern, schema in w.get("patternProperties", {}).items()
            if _may_match(pattern, name)
        ]
        if w_extra is not _MISSING:
            sent.append(w_extra)
        return sent

    # -- values --------------------------------------------------------------------------

    def writer_values(self, w: dict[str, Any]) -> list[Any] | None:
        """The only values the writer node may send (from ``const``/``enum``), or None."""
        if "const" in w:
            values = [w["const"]]
        elif "enum" in w:
            values = list(w["enum"])
        else:
            return None
        return [value for value in values if self.valid(value, w, self.wroot, judged=False)]

    def valid(self, value: Any, schema: Any, root: Any, judged: bool = True) -> bool:
        """Whether ``value`` is valid under the node ``schema`` of ``root``; when it cannot
        tell, the answer that claims no compatibility (False for a reader, True for a writer:
        ``judged=False``)."""
        from jsonschema import Draft202012Validator

        try:
            key = (id(root), judged, json.dumps(schema, sort_keys=True))
            checker = self._validators.get(key)
            if checker is None:
                # The node, with the root's definitions for its references to resolve in.
                document: dict[str, Any] = {"allOf": [schema]}
                for defs in ("$defs", "definitions"):
                    if isinstance(root, dict) and defs in root:
                        document[defs] = root[defs]
                # Formats are asserted for a reader, as they are everywhere in this module.
                checker = self._validators[key] = Draft202012Validator(
                    document, format_checker=Draft202012Validator.FORMAT_CHECKER if judged else None
                )
            return bool(checker.is_valid(value))
        except Exception:  # a reference it cannot follow, a pattern Python cannot read...
            return not judged


_MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "absent"})()


def _where(path: str) -> str:
    return path if path else "the data"


def _name(path: str) -> str:
    return path if path else "data"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _without(schema: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k not in keys}


def _constraining(schema: dict[str, Any]) -> bool:
    return any(key not in _ANNOTATIONS for key in schema)


def _pointer(root: Any, ref: str) -> Any:
    """The node of ``root`` at a local reference (``#/$defs/Address``), or ``_MISSING``."""
    if not ref.startswith("#"):
        return _MISSING
    node = root
    for part in ref[1:].split("/")[1:] if ref != "#" else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _expanded(value: Any, root: Any, seen: tuple[str, ...] = ()) -> Any:
    """``value`` with local references replaced by their targets, for comparing two schemas'
    keywords by equality (a recursive reference stays as it is written)."""
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and ref not in seen:
            target = _pointer(root, ref)
            if target is not _MISSING:
                rest = {k: v for k, v in value.items() if k != "$ref" and k not in _ANNOTATIONS}
                inner = _expanded(target, root, (*seen, ref))
                return inner if not rest else {"allOf": [inner, _expanded(rest, root, seen)]}
        return {k: _expanded(v, root, seen) for k, v in value.items() if k not in _ANNOTATIONS}
    if isinstance(value, list):
        return [_expanded(v, root, seen) for v in value]
    return _canonical(value)


def _canonical(value: Any) -> Any:
    # JSON has one number type: 1 and 1.0 are equal, true is not 1.
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, float) and value.is_integer():
        return ("number", int(value))
    if isinstance(value, (int, float)):
        return ("number", value)
    return value


def _contains(values: Sequence[Any], value: Any) -> bool:
    """Whether ``value`` is among ``values`` as JSON sees it (1 is 1.0, true is not 1)."""
    key = _value_key(value)
    return any(_value_key(v) == key for v in values)


def _value_key(value: Any) -> str:
    def tagged(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: tagged(x) for k, x in v.items()}
        if isinstance(v, list):
            return [tagged(x) for x in v]
        return _canonical(v)

    return json.dumps(tagged(value), sort_keys=True)


def _types(schema: Any) -> set[str] | None:
    """The JSON types a node allows (``integer`` standing for whole numbers), None for any."""
    if not isinstance(schema, dict) or "type" not in schema:
        return None
    declared = schema["type"]
    return {declared} if isinstance(declared, str) else set(declared)


def _accepts(types: set[str], one: str) -> bool:
    return one in types or (one == "integer" and "number" in types)


def _overlap(a: set[str], b: set[str] | None) -> bool:
    if b is None:
        return True
    return any(_accepts(b, t) for t in a) or any(_accepts(a, t) for t in b)


def _any(w: dict[str, Any]) -> str:
    """``"any string"``, ``"any value"``: what a node without an enum may be."""
    types = _types(w)
    if types is None:
        return "any value"
    return "any " + " or ".join(sorted(types))


def _few_values(w: dict[str, Any]) -> list[Any] | None:
    """Every value of a node whose types have few (booleans, null), to read against an enum."""
    types = _types(w)
    if types is None or not types <= {"boolean", "null"}:
        return None
    return [v for t, v in (("boolean", True), ("boolean", False), ("null", None)) if t in types]


def _taken(branch: Any, r: dict[str, Any]) -> bool:
    """Whether a plain reader (a ``type``, no union) takes some of the branch's types; True
    when either side's types are not known."""
    if any(key in r for key in ("anyOf", "oneOf", "allOf", "$ref")):
        return True
    sent, tr = _types(branch), _types(r)
    if sent is None or tr is None:
        return True
    return any(_accepts(tr, t) for t in sent)


def _live(w: dict[str, Any], r: dict[str, Any]) -> set[str]:
    """The writer's types that the reader takes: those whose keywords are worth comparing."""
    tw = _types(w)
    tr = _types(r)
    every = set(_TYPES)
    sent = every if tw is None else tw
    if tr is None:
        return sent
    live = {t for t in sent if _accepts(tr, t)}
    if "number" in sent and "integer" in tr and "number" not in tr:
        live.add("integer")
    return live


def _other(types: set[str]) -> str:
    """A type outside ``types`` (to show a value that it refuses)."""
    return next((t for t in ("string", "number", "null", "object") if not _accepts(types, t)), "number")


def _by_type(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """``schema`` split by its types, so that each part can match its own union branch."""
    types = _types(schema)
    if types is None or len(types) < 2:
        return [schema]
    return [{**schema, "type": t} for t in sorted(types)]


def _a_types(types: Iterable[str]) -> str:
    names = [_A_TYPE.get(t, repr(t)) for t in sorted(types, key=lambda t: (t == "null", t))]
    if len(names) <= 1:
        return names[0] if names else "nothing"
    return ", ".join(names[:-1]) + " or " + names[-1]


def _show(value: Any) -> str:
    if value == math.inf:
        return "unbounded"
    return json.dumps(value, ensure_ascii=False)


def _short(value: Any) -> str:
    if value is _MISSING:
        return "absent"
    text = _show(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- numeric bounds: (value, exclusive) ---------------------------------------------------


def _lower(schema: dict[str, Any], integral: bool) -> tuple[float, bool] | None:
    bounds = []
    if isinstance(schema.get("minimum"), (int, float)):
        bounds.append((schema["minimum"], False))
    if isinstance(schema.get("exclusiveMinimum"), (int, float)):
        bounds.append((schema["exclusiveMinimum"], True))
    if not bounds:
        return None
    if integral:
        return max(math.floor(v) + 1 if ex else math.ceil(v) for v, ex in bounds), False
    return max(bounds, key=lambda b: (b[0], b[1]))


def _upper(schema: dict[str, Any], integral: bool) -> tuple[float, bool] | None:
    bounds = []
    if isinstance(schema.get("maximum"), (int, float)):
        bounds.append((schema["maximum"], False))
    if isinstance(schema.get("exclusiveMaximum"), (int, float)):
        bounds.append((schema["exclusiveMaximum"], True))
    if not bounds:
        return None
    if integral:
        return min(math.ceil(v) - 1 if ex else math.floor(v) for v, ex in bounds), False
    return min(bounds, key=lambda b: (b[0], not b[1]))


def _within(writer: tuple[float, bool], reader: tuple[float, bool], above: bool) -> bool:
    """Whether every number within the writer's bound is within the reader's."""
    (wv, wex), (rv, rex) = writer, reader
    if wv != rv:
        return wv > rv if above else wv < rv
    return wex or not rex


def _bound(bound: tuple[float, bool]) -> str:
    value, exclusive = bound
    return f"{_show(value)}{' (excluded)' if exclusive else ''}"


def _beyond(bound: tuple[float, bool], above: bool, integral: bool) -> str:
    value, exclusive = bound
    step = 1 if integral else 0.5
    if exclusive:
        return _show(value)
    return _show(value - step if above else value + step)


def _divides(reader: Any, writer: Any, integral: bool) -> bool:
    """Whether every multiple of ``writer`` (every integer, for ``integral``) is a multiple
    of ``reader``."""
    try:
        step = Decimal(str(reader))
        if writer is not None and Decimal(str(writer)) % step == 0:
            return True
        return integral and Decimal(1) % step == 0
    except (InvalidOperation, ArithmeticError):
        return False


def _may_match(pattern: str, name: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return True


def _meet(a: Any, b: Any) -> Any:
    """A schema that every document valid under both ``a`` and ``b`` is valid under (of the
    writer: taking more than the intersection never hides a break)."""
    if a is True or a == {}:
        return b
    if b is True or b == {}:
        return a
    if a is False or b is False:
        return False
    if not isinstance(a, dict) or not isinstance(b, dict):
        return a
    merged = dict(a)
    # Keywords read together: a mix of two schemas' halves would constrain more than either.
    for group in (("if", "then", "else"), ("contains", "minContains", "maxContains")):
        if any(k in a for k in group):
            b = {k: v for k, v in b.items() if k not in group}
    for key, theirs in b.items():
        if key not in merged or merged[key] == theirs:
            merged[key] = theirs
            continue
        ours = merged[key]
        if key == "type":
            both = [t for t in _TYPES + ("integer",) if _accepts(_as_set(ours), t) and _accepts(_as_set(theirs), t)]
            if "number" in both:
                both.remove("integer")
            if not both:
                return False
            merged[key] = both[0] if len(both) == 1 else both
        elif key == "required":
            merged[key] = list(dict.fromkeys([*ours, *theirs]))
        elif key == "properties":
            merged[key] = {
                name: ({"allOf": [ours[name], theirs[name]]} if name in ours and name in theirs
                       else ours.get(name, theirs.get(name)))
                for name in dict.fromkeys([*ours, *theirs])
            }
        elif key == "allOf":
            merged[key] = [*ours, *theirs]
        elif key in ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"):
            merged[key] = max(ours, theirs)
        elif key in ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"):
            merged[key] = min(ours, theirs)
        elif key == "enum":
            merged[key] = [v for v in ours if _contains(theirs, v)]
        # Any other clash: keep one side's keyword (a looser writer, never a stricter one).
    return merged


def _as_set(declared: Any) -> set[str]:
    return {declared} if isinstance(declared, str) else set(declared)

