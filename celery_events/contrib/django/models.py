"""The outbox and inbox tables.

``OutboxEvent``: one row per event published through the outbox, written in the publisher's
transaction and marked sent by a relay; it keeps the whole event (extensions, subject and
dataschema included), so the relay sends what ``publish`` returned. ``InboxEntry``: one row per (event id, handler) that a
``@bus.subscribe(..., atomic=True)`` handler committed, written in the handler's transaction.
"""

from __future__ import annotations

import json
from datetime import datetime

from django.db import models
from django.utils import timezone

from ...envelope import Event

__all__ = [
    "OutboxEvent",
    "InboxEntry",
    "WorkerProcess",
    "DeliveryLease",
    "DeliveryRecord",
    "DeadLetterRecord",
]


class OutboxEvent(models.Model):
    """An event waiting in (or already sent from) the transactional outbox."""

    event_id = models.CharField(max_length=255, unique=True)
    name = models.CharField(max_length=255)
    source = models.CharField(max_length=255)
    #: The event's time as its envelope has it (RFC 3339, UTC), kept to the microsecond.
    time = models.CharField(max_length=40)
    correlation_id = models.CharField(max_length=255)
    causation_id = models.CharField(max_length=255, null=True, blank=True)
    #: The event's data as the exact JSON text that was validated at publish time.
    data = models.TextField()
    #: The event's CloudEvents extension attributes (name to string, integer or boolean).
    #: Rows from before the column read as none, and so does NULL: a process still running the
    #: previous version during a deploy inserts rows without the column.
    extensions = models.JSONField(default=dict, blank=True, null=True)
    #: The optional CloudEvents attributes ``subject`` and ``dataschema``.
    subject = models.TextField(null=True, blank=True)
    dataschema = models.TextField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True, db_index=True)
    #: Set when the row can never be sent (its data breaks a setting changed since it was
    #: written); such a row is kept with its error and no longer relayed.
    failed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        db_table = "celery_events_outbox"
        verbose_name = "outbox event"
        ordering = ["-id"]
        indexes = [
            # What every relay poll reads: the oldest unsent rows.
            models.Index(
                fields=["id"],
                name="celery_events_outbox_unsent",
                condition=models.Q(sent_at__isnull=True, failed_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.event_id}"

    @classmethod
    def from_event(cls, event: Event, data_json: str) -> OutboxEvent:
        return cls(
            event_id=event.id,
            name=event.name,
            source=event.source,
            time=event.to_envelope()["time"],
            correlation_id=event.correlation_id,
            causation_id=event.causation_id,
            data=data_json,
            extensions=dict(event.extensions),
            subject=event.subject,
            dataschema=event.dataschema,
        )

    def to_event(self) -> Event:
        """The stored event, with the id, time, correlation, cause, extensions, subject and
        dataschema it was published with.

        Raises :class:`~celery_events.InvalidEnvelope` for stored extensions that are not a
        JSON object (``publish_event`` checks the rest), so the relay marks the row failed.
        """
        return Event(
            id=self.event_id,
            name=self.name,
            data=json.loads(self.data),
            source=self.source,
            time=datetime.fromisoformat(self.time.replace("Z", "+00:00")),
            correlation_id=self.correlation_id,
            causation_id=self.causation_id,
            # A NULL written by hand reads as none, like the rows from before the column.
            extensions=self.extensions or {},
            subject=self.subject,
            dataschema=self.dataschema,
        )


class InboxEntry(models.Model):
    """A delivery an atomic handler committed: (event id, handler) is never handled twice."""

    event_id = models.CharField(max_length=255)
    handler = models.CharField(max_length=255)
    event_name = models.CharField(max_length=255)
    handled_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        db_table = "celery_events_inbox"
        verbose_name = "inbox entry"
        verbose_name_plural = "inbox entries"
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["event_id", "handler"], name="celery_events_inbox_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.handler} {self.event_id}"


# -- the database state store (``state.py``, ``CELERY_EVENTS["state"] = "database"``) -------


class WorkerProcess(models.Model):
    """A process that runs deliveries, alive while ``expires_at`` (the database's clock) is
    ahead: a daemon thread of the process pushes it forward every few seconds."""

    token = models.CharField(max_length=64, primary_key=True)
    host = models.CharField(max_length=255, default="")
    pid = models.IntegerField(default=0)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "celery_events_process"
        verbose_name = "worker process"

    def __str__(self) -> str:
        return f"{self.host}:{self.pid} {self.token}"


class DeliveryLease(models.Model):
    """One (handler, event) of the state store's inbox: ``done`` once handled, or the lease
    of the run holding it; either counts only until ``expires_at``."""

    DONE = "done"
    LEASE = "lease"

    handler = models.CharField(max_length=255)
    event_id = models.CharField(max_length=255)
    #: ``done``, ``lease``, or empty (a row made to be locked, holding nothing).
    state = models.CharField(max_length=8, default="")
    #: The lease's JSON text (``backends.base.lease_value``) while ``state`` is ``lease``.
    lease = models.TextField(default="", blank=True)
    #: The :class:`WorkerProcess` token the lease names.
    process = models.CharField(max_length=64, default="", blank=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "celery_events_lease"
        verbose_name = "delivery lease"
        constraints = [
            models.UniqueConstraint(fields=["handler", "event_id"], name="celery_events_lease_once"),
        ]

    def __str__(self) -> str:
        return f"{self.handler} {self.event_id} {self.state}"


class DeliveryRecord(models.Model):
    """One delivery's (task id's) runs begun and not finished, and failures so far."""

    task_id = models.CharField(max_length=255, unique=True)
    starts = models.IntegerField(default=0)
    failures = models.IntegerField(default=0)
    #: Seconds since the epoch, as the Redis store keeps it.
    first_failed_at = models.FloatField(null=True, blank=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "celery_events_delivery"
        verbose_name = "delivery record"

    def __str__(self) -> str:
        return f"{self.task_id} starts={self.starts} failures={self.failures}"


class DeadLetterRecord(models.Model):
    """One dead letter of one service, as the JSON text the dead-letter store writes.

    Text, not a JSON column: a record edited into something unreadable is still kept and
    listed (as ``unreadable_record``), as the Redis store does.
    """

    service = models.CharField(max_length=255)
    letter_id = models.CharField(max_length=255)
    record = models.TextField()
    #: When it was stored, seconds since the epoch: the order of listing and trimming.
    score = models.FloatField()

    class Meta:
        db_table = "celery_events_dead_letter"
        verbose_name = "dead letter"
        constraints = [
            models.UniqueConstraint(
                fields=["service", "letter_id"], name="celery_events_dead_letter_once"
            ),
        ]
        indexes = [
            models.Index(fields=["service", "score"], name="celery_events_dead_by_time"),
        ]

    def __str__(self) -> str:
        return f"{self.service} {self.letter_id}"
