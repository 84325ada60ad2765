"""What a publish returns: the event and its deliveries."""

from __future__ import annotations

from dataclasses import dataclass, field

from .envelope import Event

__all__ = ["Delivery", "PublishResult"]


@dataclass(frozen=True)
class Delivery:
    """One event sent to one handler: one Celery task."""

    service: str
    #: The handler's Celery task name.
    handler: str
    queue: str
    task_id: str


@dataclass(frozen=True)
class PublishResult:
    """What a publish sent: the event and one delivery per matching subscription.

    ``deferred`` is true when the event was not sent yet but will be: the Django integration
    sends it after the current database transaction commits, or writes it to the outbox. The
    event (and its id) is final then, and ``deliveries`` is empty.
    """

    event: Event
    deliveries: tuple[Delivery, ...] = field(default_factory=tuple)
    deferred: bool = False
