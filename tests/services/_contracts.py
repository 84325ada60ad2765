"""The schemas of ``order.created`` that tests/services/declared.py declares, by name."""

from typing import Any

SCHEMAS: dict[str, dict[str, Any]] = {
    "v1": {
        "type": "object",
        "properties": {"order_id": {"type": "integer"}, "total": {"type": "number"}},
        "required": ["order_id"],
    },
    # v1 plus an optional note: compatible with v1 in every mode.
    "v1-noted": {
        "type": "object",
        "properties": {
            "order_id": {"type": "integer"},
            "total": {"type": "number"},
            "note": {"type": "string"},
        },
        "required": ["order_id"],
    },
    # total narrowed to an integer: breaks v1 under BACKWARD.
    "v1-narrowed": {
        "type": "object",
        "properties": {"order_id": {"type": "integer"}, "total": {"type": "integer"}},
        "required": ["order_id"],
    },
    "v2": {
        "type": "object",
        "properties": {"order_id": {"type": "string"}, "total": {"type": "number"}},
        "required": ["order_id", "total"],
    },
}
