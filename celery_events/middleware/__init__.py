"""Middleware: one chain per bus, around publishing and handling (see :mod:`.base`)."""

from .base import (
    PUBLISH,
    REPLAY,
    SKIPPED,
    HandleNext,
    HandlerCall,
    Middleware,
    Outcome,
    PublishCall,
    PublishNext,
    Receipt,
    Settled,
)
from .chain import MiddlewareChain

__all__ = [
    "Middleware",
    "MiddlewareChain",
    "PublishCall",
    "HandlerCall",
    "PublishNext",
    "HandleNext",
    "Receipt",
    "Settled",
    "Outcome",
    "SKIPPED",
    "PUBLISH",
    "REPLAY",
]
