"""Copies of the package's frozen dataclasses (an event, a publish call) with fields changed."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, TypeVar

__all__ = ["copied"]

T = TypeVar("T")


def copied(value: T, exact: type[T], **changes: Any) -> T:
    """``dataclasses.replace(value, **changes)`` for a value of exactly the type ``exact``
    whose changed fields the caller has already checked.

    ``replace`` looks every field up and runs ``__init__`` and ``__post_init__`` again (one
    ``object.__setattr__`` per field): tracing and signing copy the event and the call of every
    publish, and that cost them more than the rest of their work but the span or the signature.
    Here the fields are copied as they are, the changed ones set. A subclass, whose
    ``__post_init__`` may check more, goes through ``replace``.
    """
    if type(value) is not exact:
        return replace(value, **changes)  # type: ignore[type-var]
    copy = object.__new__(exact)
    copy.__dict__.update(value.__dict__, **changes)
    return copy
