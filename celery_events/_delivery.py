"""The Celery task that runs one handler for one delivery, on the subscriber's worker."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, Task

from .envelope import Event

log = logging.getLogger(__name__)

#: The event whose handler is running in this context, so that events published from inside
#: a handler carry its correlation id and name it as their cause.
current_event: ContextVar[Event | None] = ContextVar("celery_events_current_event", default=None)

HandlerFunc = Callable[[Event], Any]


@dataclass(frozen=True)
class Handler:
    """A subscribed function and where its deliveries go."""

    pattern: str
    func: HandlerFunc
    #: The Celery task name, ``{service}.{name}``.
    task_name: str
    queue: str
    task_options: dict[str, Any] = field(default_factory=dict)


def register_task(app: Celery, handler: Handler) -> Task:
    """Register the Celery task that delivers events to ``handler`` in ``app``."""
    func = handler.func

    def deliver(self: Task, envelope: object) -> None:
        event = Event.from_envelope(envelope)
        token = current_event.set(event)
        try:
            func(event)
        finally:
            current_event.reset(token)

    deliver.__doc__ = func.__doc__
    options: dict[str, Any] = {
        "name": handler.task_name,
        "bind": True,
        # Acknowledge after the handler ran, and requeue if the worker process dies, so that
        # a crash means a redelivery rather than a lost event.
        "acks_late": True,
        "reject_on_worker_lost": True,
        "ignore_result": True,
        "typing": False,
        # A shared task would be added to every Celery app in the process, including other
        # services' apps in tests and monoliths.
        "shared": False,
    }
    options.update(handler.task_options)
    task: Task = app.task(**options)(deliver)
    return task
