"""Event contracts: schemas, versions, compatibility and the checks built on them.

- :mod:`.schemas`: a JSON Schema or pydantic model, compiled once (:class:`Schema`).
- :mod:`.compatibility`: whether a new schema keeps what registered ones promised.
- :mod:`.middleware`: validation at publish and on receipt (the :class:`Contracts` middleware).
- :mod:`.check`: local declarations against the registry or a committed file.

Declarations themselves are :class:`~celery_events.Declaration` (``bus.declare``).
"""

from .compatibility import Change, breaking_changes, check_against, describe, reader_breaks
from .schemas import Schema, compiled, schema_from

__all__ = [
    "Schema",
    "schema_from",
    "compiled",
    "Change",
    "reader_breaks",
    "breaking_changes",
    "check_against",
    "describe",
]
