"""Plain-text tables for the command line."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def render_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Return ``rows`` as left-aligned columns under ``headers``, two spaces apart.

    >>> from celery_events._table import render_table
    >>> print(render_table(["a", "bb"], [["x", 1]]))
    A  BB
    x  1
    """
    cells = [[str(h).upper() for h in headers]]
    cells.extend(["" if c is None else str(c) for c in row] for row in rows)
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )
