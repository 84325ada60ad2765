"""Recording what a bus would publish, instead of sending it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..bus import EventBus, PublishResult
from ..envelope import Event
from ..middleware import REPLAY, Middleware, PublishCall, PublishNext

__all__ = ["Captured", "capture_published"]


class Captured:
    """The events a bus would have sent, in order; a sequence of :class:`Event`."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __getitem__(self, index: int) -> Event:
        return self.events[index]

    @property
    def names(self) -> list[str]:
        """The names of the captured events, in order."""
        return [event.name for event in self.events]

    def named(self, name: str) -> list[Event]:
        """The captured events called ``name``."""
        return [event for event in self.events if event.name == name]

    def clear(self) -> None:
        self.events.clear()


@contextmanager
def capture_published(bus: EventBus) -> Iterator[Captured]:
    """Record every event ``bus`` sends inside the block, and send nothing.

    Input is validated exactly as in a real publish (a bad name or data still raises), the
    event gets its id, time, correlation and cause, and ``publish`` returns a
    :class:`~celery_events.PublishResult` without deliveries. No broker or registry is touched,
    so ``require_subscribers`` is not checked. With the Django integration an event is sent,
    and so captured, when its transaction commits (in pytest-django, use
    ``django_capture_on_commit_callbacks(execute=True)`` or a transactional test). Replays of
    dead letters (and the deliveries of a :class:`~celery_events.testing.HandlerRunner`) are
    not publishes: they are sent, not captured.

    >>> from celery import Celery
    >>> from celery_events import EventBus
    >>> from celery_events.testing import capture_published
    >>> bus = EventBus(Celery("shop", broker="memory://"), service="shop")
    >>> with capture_published(bus) as published:
    ...     result = bus.publish("order.placed", {"order_id": 7})
    >>> published.names, published[0].data
    (['order.placed'], {'order_id': 7})
    """
    captured = Captured()
    # One capturing middleware per bus; a capture inside another takes the events until it ends.
    active = next((m for m in bus.middleware if isinstance(m, _Capture)), None)
    if active is not None:
        active.stack.append(captured)
        try:
            yield captured
        finally:
            active.stack.remove(captured)
        return
    with bus.middleware.added(_Capture(captured)):
        yield captured


class _Capture(Middleware):
    """The innermost publish scope while a capture is active: it records, and sends nothing.

    Innermost, so that every other middleware (Django's publish-on-commit included) has run,
    and before the registry is read, so that no broker or registry is needed.
    """

    def __init__(self, captured: Captured) -> None:
        self.stack = [captured]

    def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
        if not self.stack:  # deferred inside the block, sent after it (an on-commit)
            return call_next(call)
        if call.origin == REPLAY:
            # A replay is one delivery sent again, not an event the code under test published;
            # the HandlerRunner sends its deliveries this way, so a runner inside a capture
            # block still runs handlers.
            return call_next(call)
        self.stack[-1].events.append(call.event)
        return PublishResult(call.event)
