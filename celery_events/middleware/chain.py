"""The chain: a bus's middleware, composed once, and nothing at all when there is none.

Each scope and notification keeps only the middleware that override it, so a bus without
middleware (or whose middleware only listens to notifications) calls straight through: a
publish or a delivery pays one ``is None`` test per scope.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..results import PublishResult
from .base import HandleNext, HandlerCall, Middleware, PublishCall, PublishNext, Receipt

if TYPE_CHECKING:
    from ..deadletters import DeadLetter

__all__ = ["MiddlewareChain"]

log = logging.getLogger(__name__)

_NOTIFICATIONS = (
    "on_retry",
    "on_dead_letter",
    "on_duplicate_skipped",
    "on_redelivered",
    "on_settled",
    "on_published",
    "on_worker_start",
    "on_worker_stop",
)


def _overrides(middleware: Middleware, method: str) -> bool:
    return getattr(type(middleware), method) is not getattr(Middleware, method)


class MiddlewareChain:
    """The middleware of one bus, in order (``bus.middleware``); the first is the outermost.

    Built once when the bus is made. ``publish_scope`` and ``handle_scope`` are ``None`` when
    no middleware wraps that scope, and each notification list holds only the middleware that
    listen to it, so the bus skips what is empty.
    """

    def __init__(self, middleware: Iterable[Middleware], terminal: PublishNext) -> None:
        items = tuple(middleware)
        for item in items:
            if not isinstance(item, Middleware):
                raise ConfigurationError(
                    f"EventBus(middleware=[...]) takes instances of"
                    f" celery_events.Middleware, not {item!r}; subclass Middleware and pass"
                    " an instance."
                )
        self._terminal = terminal
        self._build(items)

    def _build(self, items: tuple[Middleware, ...]) -> None:
        self.middleware = items
        #: Whether a middleware runs ``atomic=True`` handlers in a database transaction.
        self.transactional = any(m.transactional for m in items)
        #: Whether a middleware's publish scope or ``on_published`` does blocking I/O
        #: (``bus.apublish`` then keeps the publish path off the event loop).
        self.publishes_with_io = any(m.publishes_with_io for m in items)
        publish: PublishNext | None = None
        for item in reversed([m for m in items if _overrides(m, "publish")]):
            publish = partial(item.publish, call_next=publish or self._terminal)
        #: The composed publish scopes, called with a :class:`PublishCall`; ``None`` if none.
        self.publish_scope: PublishNext | None = publish
        #: The receive hooks, innermost first (the mirror of publishing); empty if none.
        self.receive_hooks: tuple[Callable[[Receipt], Receipt], ...] = tuple(
            m.receive for m in reversed(items) if _overrides(m, "receive")
        )
        handlers = tuple(m for m in items if _overrides(m, "handle"))
        #: The handle scopes in order, outermost first; ``None`` if none.
        self.handle_scope: tuple[Middleware, ...] | None = handlers or None
        self.on_retry = tuple(m.on_retry for m in items if _overrides(m, "on_retry"))
        self.on_dead_letter = tuple(
            m.on_dead_letter for m in items if _overrides(m, "on_dead_letter")
        )
        self.on_duplicate_skipped = tuple(
            m.on_duplicate_skipped for m in items if _overrides(m, "on_duplicate_skipped")
        )
        self.on_redelivered = tuple(
            m.on_redelivered for m in items if _overrides(m, "on_redelivered")
        )
        self.on_settled = tuple(m.on_settled for m in items if _overrides(m, "on_settled"))
        self.on_published = tuple(
            m.on_published for m in items if _overrides(m, "on_published")
        )
        #: Whether anything wraps or hears of single deliveries (else the worker does not
        #: even describe them).
        self.sees_deliveries = bool(
            handlers
            or self.on_retry
            or self.on_duplicate_skipped
            or self.on_redelivered
            or self.on_settled
        )
        self.on_worker_start = tuple(
            m.on_worker_start for m in items if _overrides(m, "on_worker_start")
        )
        self.on_worker_stop = tuple(
            m.on_worker_stop for m in items if _overrides(m, "on_worker_stop")
        )

    def __iter__(self) -> Iterator[Middleware]:
        return iter(self.middleware)

    def __len__(self) -> int:
        return len(self.middleware)

    def __repr__(self) -> str:
        return f"MiddlewareChain({list(self.middleware)!r})"

    @contextmanager
    def added(self, middleware: Middleware) -> Iterator[Middleware]:
        """Run ``middleware`` as the innermost of the chain inside the block (for tests:
        ``celery_events.testing.capture_published`` uses it). Not for concurrent use: the
        chain is rebuilt on entry and exit."""
        self._build((*self.middleware, *MiddlewareChain([middleware], self._terminal)))
        try:
            yield middleware
        finally:
            self._build(tuple(m for m in self.middleware if m is not middleware))

    def run_publish(self, call: PublishCall) -> PublishResult:
        """Send ``call`` through the publish scopes (or straight to the send, without any)."""
        scope = self.publish_scope
        return scope(call) if scope is not None else self._terminal(call)

    def run_receive(self, receipt: Receipt) -> Receipt:
        """Pass ``receipt`` through the receive hooks, innermost first; each may refuse it
        (:class:`~celery_events.DeliveryRefused`) or hand on a changed event."""
        for hook in self.receive_hooks:
            receipt = hook(receipt)
            if not isinstance(receipt, Receipt):
                raise TypeError(
                    f"The receive hook {hook!r} returned {type(receipt).__name__}; a receive"
                    " hook returns the receipt it was given, or receipt.with_event(...)."
                )
        return receipt

    def run_handle(self, call: HandlerCall, terminal: Callable[[HandlerCall], Any]) -> Any:
        """Run ``terminal`` (the handler call) inside the handle scopes, outermost first."""
        scopes = self.handle_scope
        if scopes is None:
            return terminal(call)
        return _HandleStep(scopes, 0, terminal)(call)

    def notify(self, listeners: tuple[Callable[..., None], ...], *args: Any) -> None:
        """Tell each listener; one that raises is logged and does not stop the worker."""
        for listener in listeners:
            try:
                listener(*args)
            except Exception:
                log.exception(
                    "celery-events: middleware notification %r raised", listener
                )

    def worker_started(self, bus: Any) -> None:
        self.notify(self.on_worker_start, bus)

    def worker_stopping(self, bus: Any) -> None:
        self.notify(self.on_worker_stop, bus)

    def dead_lettered(self, letter: DeadLetter) -> None:
        self.notify(self.on_dead_letter, letter)


class _HandleStep:
    """``call_next`` of handle scope number ``index``: the next scope, or the handler."""

    __slots__ = ("scopes", "index", "terminal")

    def __init__(
        self, scopes: tuple[Middleware, ...], index: int, terminal: Callable[[HandlerCall], Any]
    ) -> None:
        self.scopes = scopes
        self.index = index
        self.terminal = terminal

    def __call__(self, call: HandlerCall) -> Any:
        if self.index == len(self.scopes):
            return self.terminal(call)
        next_step: HandleNext = _HandleStep(self.scopes, self.index + 1, self.terminal)
        return self.scopes[self.index].handle(call, next_step)
