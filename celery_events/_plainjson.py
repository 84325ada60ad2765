"""Plain JSON for everything the bus reads from the wire: no object hooks, bounded nesting.

kombu's own JSON decoder turns objects shaped ``{"__type__": ..., "__value__": ...}`` into
``datetime``, ``bytes`` or ``UUID``; event data must reach handlers exactly as it was
published, so the bus decodes its own messages here. Deeply nested data is refused before it
can exhaust the interpreter's recursion limit (in ``json``, or in pickling for a prefork pool).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["loads", "NestedTooDeep", "depth_exceeds", "find_problem", "Problem", "DEFAULT_MAX_DEPTH"]

#: Default of the ``max_event_depth`` setting: the deepest nesting of lists and objects in
#: event data.
DEFAULT_MAX_DEPTH = 64


class NestedTooDeep(ValueError):
    """JSON text nests so deep that decoding it would exhaust the recursion limit."""


def loads(text: str | bytes, *, unique_keys: bool = False) -> Any:
    """Decode JSON with the standard library and no hooks; raise ``ValueError`` when it is not
    JSON, and its subclass :class:`NestedTooDeep` when it nests so deep that decoding would
    recurse too far.

    With ``unique_keys``, an object that names a key twice is refused too (plain JSON keeps
    the last value and silently drops the others), for input typed by people.
    """
    try:
        if unique_keys:
            return json.loads(text, object_pairs_hook=_unique)
        return json.loads(text)
    except RecursionError:
        raise NestedTooDeep("JSON nested too deep to decode") from None


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"the key {key!r} appears twice in one object")
        found[key] = value
    return found


def depth_exceeds(value: object, limit: int) -> bool:
    """Tell whether ``value`` nests lists and dicts more than ``limit`` levels deep.

    ``{}`` and ``[]`` are one level, a scalar none. Iterative, so it never recurses itself.

    >>> from celery_events._plainjson import depth_exceeds
    >>> depth_exceeds({"a": [1, {"b": 2}]}, 3), depth_exceeds({"a": [1, {"b": 2}]}, 2)
    (False, True)
    """
    return find_problem(value, limit) is not None


@dataclass(frozen=True)
class Problem:
    """What :func:`find_problem` found, and where."""

    #: ``"too_deep"``, ``"cycle"`` (a container holds itself), ``"key"`` (a key that is not
    #: a string) or ``"value"`` (a value JSON cannot hold).
    kind: str
    #: Where, from the top, as Python subscripts: ``["a"][3]`` (empty for the top itself).
    path: str
    #: The offending key or value (the container, for ``too_deep`` and ``cycle``).
    culprit: object


# A step of the walk: a value, its depth, and how it was reached (the step above and the key
# or index), kept as a chain so that a path is only spelled out when it is reported.
_Step = tuple[object, int, "tuple[Any, object] | None"]
_SCALARS = (str, int, float, type(None))


def find_problem(
    value: object, limit: int, *, keys: bool = False, values: bool = False
) -> Problem | None:
    """Walk ``value`` and return the first thing that makes it unfit for the wire, or None.

    Always checks nesting: lists, tuples and dicts more than ``limit`` levels deep (``{}`` is
    one level) or holding themselves. With ``keys``, dict keys must be strings (JSON would
    turn ``1``, ``None`` or ``True`` into strings, and ``{1: "x", "1": "y"}`` would lose a
    value). With ``values``, every other value must be a string, a finite number, a boolean
    or None. Iterative, so it never recurses itself however deep ``value`` is.

    >>> from celery_events._plainjson import find_problem
    >>> find_problem({"a": [1, {2: "b"}]}, 64, keys=True)
    Problem(kind='key', path='["a"][1]', culprit=2)
    """
    stack: list[_Step] = [(value, 1, None)]
    while stack:
        item, depth, via = stack.pop()
        if isinstance(item, dict):
            entries: Any = item.items()
        elif isinstance(item, (list, tuple)):
            entries = enumerate(item)
        else:
            if values and (
                not isinstance(item, _SCALARS) or (isinstance(item, float) and not math.isfinite(item))
            ):
                return Problem("value", _spell(_steps(via)), item)
            continue
        if depth > limit:
            return _too_deep(value, item, via)
        if keys and isinstance(item, dict):
            for key in item:
                if not isinstance(key, str):
                    return Problem("key", _spell(_steps(via)), key)
        for key, child in entries:
            # Scalars are only pushed when they are checked: plain data stays cheap to walk.
            if values or isinstance(child, (dict, list, tuple)):
                stack.append((child, depth + 1, (via, key)))
    return None


def _too_deep(top: object, item: object, via: tuple[Any, object] | None) -> Problem:
    # A container that holds itself is "too deep" too; say which it is, since the fixes
    # differ. The chain of steps keeps no containers, so follow it down again from the top.
    seen = {id(top)}
    node, steps = top, _steps(via)
    for depth, key in enumerate(steps, start=1):
        node = node[key]  # type: ignore[index]
        if id(node) in seen:
            return Problem("cycle", _spell(steps[:depth]), node)
        seen.add(id(node))
    return Problem("too_deep", _spell(steps), item)


def _steps(via: tuple[Any, object] | None) -> list[object]:
    steps = []
    while via is not None:
        via, key = via
        steps.append(key)
    steps.reverse()
    return steps


def _spell(steps: list[object], most: int = 8) -> str:
    """``["a"][3]``; a long path keeps its first and last steps around an ellipsis."""
    shown = [
        f"[{json.dumps(key, ensure_ascii=False)}]" if isinstance(key, str) else f"[{key!r}]"
        for key in steps
    ]
    if len(shown) > most:
        shown = [*shown[: most // 2], "…", *shown[-(most // 2 - 1):]]
    return "".join(shown)
