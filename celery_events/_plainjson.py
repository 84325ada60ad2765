"""Plain JSON for everything the bus reads from the wire: no object hooks, bounded nesting.

kombu's own JSON decoder turns objects shaped ``{"__type__": ..., "__value__": ...}`` into
``datetime``, ``bytes`` or ``UUID``; event data must reach handlers exactly as it was
published, so the bus decodes its own messages here. Deeply nested data is refused before it
can exhaust the interpreter's recursion limit (in ``json``, or in pickling for a prefork pool).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["loads", "depth_exceeds", "DEFAULT_MAX_DEPTH"]

#: Default of the ``max_event_depth`` setting: the deepest nesting of lists and objects in
#: event data.
DEFAULT_MAX_DEPTH = 64


def loads(text: str | bytes) -> Any:
    """Decode JSON with the standard library and no hooks; raise ``ValueError`` when it is not
    JSON, including when it nests so deep that decoding would recurse too far."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deep to decode") from None


def depth_exceeds(value: object, limit: int) -> bool:
    """Tell whether ``value`` nests lists and dicts more than ``limit`` levels deep.

    ``{}`` and ``[]`` are one level, a scalar none. Iterative, so it never recurses itself.

    >>> depth_exceeds({"a": [1, {"b": 2}]}, 3), depth_exceeds({"a": [1, {"b": 2}]}, 2)
    (False, True)
    """
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, tuple)))
    return False
