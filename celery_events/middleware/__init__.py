"""Middleware: one chain per bus, around publishing and handling (see :mod:`.base`)."""

from .base import (
    PUBLISH,
    REPLAY,
    SKIPPED,
    HandleNext,
    HandlerCall,
    Middleware,
    PublishCall,
    PublishNext,
    Receipt,
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
    "SKIPPED",
    "PUBLISH",
    "REPLAY",
]
