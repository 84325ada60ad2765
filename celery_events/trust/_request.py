"""The Celery Request class of handler tasks (named by its path, so that only a worker imports
Celery's worker modules)."""

from __future__ import annotations

from typing import Any

from celery.worker.request import Request

__all__ = ["MaskedRequest"]


class MaskedRequest(Request):  # type: ignore[misc]
    """What ``celery inspect reserved`` and ``scheduled`` (and Flower's worker page) list of a
    waiting delivery is its argument text, with sensitive fields masked, not its raw arguments,
    as ``celery inspect active`` already does with ``safe=True``."""

    def info(self, safe: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = super().info(safe=True)
        return result
