"""The transactional outbox's relay: it sends stored events and marks them sent.

With ``CELERY_EVENTS["outbox"] = True``, ``bus.publish()`` writes the event to the outbox table
in the caller's transaction: the event exists if and only if the caller's data was committed.
A relay then sends each unsent row through the bus (the normal, atomic fan-out) and marks it
sent. Run one with ``manage.py celery_events_relay``, or inside the service's worker with
``CELERY_EVENTS["relay_in_worker"] = True``; run as many as you like.

Guarantees:

- Several relays never send one row twice: each takes its batch with
  ``SELECT ... FOR UPDATE SKIP LOCKED`` and marks it sent in the same transaction. (SQLite has
  no row locks: run a single relay there.)
- A row that can never be sent (its data breaks a setting changed since it was written) is
  marked failed with its error, kept, logged and shown in the admin.
- Nothing committed is lost: while the broker is down, rows stay unsent and the relay keeps
  retrying; they go out, in order of writing, once it is back.
- A relay that dies after sending but before its transaction commits leaves the rows unsent,
  so they are sent again with the same event ids: subscribers see them twice, and their inbox
  (``atomic=True`` handlers) skips the repeat.
- Sent rows are deleted after ``outbox_retention`` seconds, inbox rows after
  ``inbox_retention`` (``manage.py celery_events_cleanup``, and every relay once a minute).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

from celery import signals
from django.db import DatabaseError, connections, transaction
from django.utils import timezone

from ...bus import EventBus
from ...errors import CeleryEventsError, PartialPublishError, PublishError
from .conf import read_config
from .middleware import relaying

__all__ = ["OutboxRelay", "cleanup"]

log = logging.getLogger(__name__)

#: Seconds between two clean-ups by a running relay.
CLEANUP_EVERY = 60.0


class OutboxRelay:
    """Sends the outbox's unsent rows through ``bus``.

    >>> import threading
    >>> from django.conf import settings
    >>> from django.db import transaction
    >>> from celery_events.contrib.django import get_bus
    >>> from celery_events.contrib.django.outbox import OutboxRelay
    >>> settings.CELERY_EVENTS["outbox"]       # so publish() writes rows of the outbox
    True
    >>> with transaction.atomic():
    ...     for order_id in (1, 2, 3):
    ...         result = get_bus().publish("order.placed", {"order_id": order_id})
    >>> relay = OutboxRelay(get_bus())
    >>> relay.relay_once()        # one batch: returns how many events were sent
    3
    >>> stop = threading.Event()
    >>> thread = threading.Thread(target=relay.run, args=(stop,))
    >>> thread.start()            # relay.run(stop) relays until the threading.Event is set
    >>> stop.set(); thread.join()
    """

    def __init__(
        self,
        bus: EventBus,
        *,
        using: str | None = None,
        batch_size: int | None = None,
        interval: float | None = None,
    ) -> None:
        config = read_config()
        self.bus = bus
        self.using = using or config.database
        self.batch_size = batch_size or config.relay_batch_size
        self.interval = interval or config.relay_interval
        #: Events this relay has sent since it was made.
        self.sent = 0

    def relay_once(self) -> int:
        """Send one batch of unsent rows, oldest first, and mark them sent; return how many.

        The batch goes out in one ``bus.publish_many`` (one round trip to the broker), and
        its rows are marked sent in the transaction that locked them, once it is sent. Raises
        :class:`PublishError` when the broker does not take the batch: on a backend without
        ``atomic_batches`` the rows of the events it did send are marked sent (a
        :class:`~celery_events.PartialPublishError` says how many), the others stay unsent.
        A row that can never be sent is marked failed, and the others are sent.
        """
        from .models import OutboxEvent

        failure: PublishError | None = None
        with transaction.atomic(using=self.using):
            rows = list(
                OutboxEvent.objects.using(self.using)
                .select_for_update(skip_locked=True)
                .filter(sent_at__isnull=True, failed_at__isnull=True)
                .order_by("id")[: self.batch_size]
            )
            sendable = []
            events = []
            for row in rows:
                try:
                    events.append(row.to_event())
                except CeleryEventsError as exc:
                    self._failed(row, exc)
                    continue
                sendable.append(row)
            try:
                with relaying():
                    self.bus.publish_many(events, require_subscribers=False)
                sent_rows = sendable
            except PartialPublishError as exc:
                sent_rows = sendable[: exc.sent]
                self._not_sent(sendable[exc.sent], exc)
                failure = exc
            except PublishError as exc:
                sent_rows = []
                if sendable:
                    self._not_sent(sendable[0], exc)
                failure = exc
            except CeleryEventsError:
                # A row whose event publish refuses (its data breaks a setting changed since
                # it was written): one at a time, the others go and it is marked failed.
                sent_rows, failure = self._one_by_one(sendable)
            if sent_rows:
                OutboxEvent.objects.using(self.using).filter(
                    pk__in=[row.pk for row in sent_rows]
                ).update(sent_at=timezone.now())
        self.sent += len(sent_rows)
        if failure is not None:
            raise failure
        return len(sent_rows)

    def _one_by_one(self, rows: list[Any]) -> tuple[list[Any], PublishError | None]:
        """Send ``rows`` one ``publish_event`` each, marking failed those that can never be
        sent; stop at the first the broker does not take. Returns the rows sent, and that
        broker error."""
        sent: list[Any] = []
        for row in rows:
            try:
                with relaying():
                    self.bus.publish_event(row.to_event(), require_subscribers=False)
            except PublishError as exc:
                # The broker is down: the rest of the batch would fail the same way.
                self._not_sent(row, exc)
                return sent, exc
            except CeleryEventsError as exc:
                self._failed(row, exc)
                continue
            sent.append(row)
        return sent, None

    def _not_sent(self, row: Any, exc: PublishError) -> None:
        row.attempts += 1
        row.last_error = str(exc)
        row.save(using=self.using, update_fields=["attempts", "last_error"])

    def _failed(self, row: Any, exc: CeleryEventsError) -> None:
        log.error(
            "celery-events: outbox event %s can never be sent and is marked failed: %s",
            row.event_id,
            exc,
        )
        row.attempts += 1
        row.last_error = str(exc)
        row.failed_at = timezone.now()
        row.save(using=self.using, update_fields=["attempts", "last_error", "failed_at"])

    def drain(self) -> int:
        """Send batches until no unsent row is left for this relay; return how many."""
        total = 0
        while True:
            count = self.relay_once()
            total += count
            if count == 0:
                return total

    def run(self, stop: threading.Event) -> None:
        """Relay until ``stop`` is set, waiting ``interval`` seconds when there is nothing to send.

        Broker and database errors are logged and retried; clean-up runs once a minute.
        """
        next_cleanup = time.monotonic()
        try:
            while not stop.is_set():
                count = 0
                try:
                    count = self.relay_once()
                    if time.monotonic() >= next_cleanup:
                        cleanup(self.using)
                        next_cleanup = time.monotonic() + CLEANUP_EVERY
                except PublishError as exc:
                    log.warning("celery-events: outbox relay could not send: %s", exc)
                except DatabaseError as exc:
                    log.warning("celery-events: outbox relay could not read the outbox: %s", exc)
                    connections[self.using].close()
                if count < self.batch_size:
                    stop.wait(self.interval)
        finally:
            connections.close_all()


def cleanup(using: str | None = None) -> tuple[int, int]:
    """Delete sent outbox rows and inbox rows older than their retention; return both counts."""
    from .models import InboxEntry, OutboxEvent

    config = read_config()
    using = using or config.database
    now = timezone.now()
    outbox, _ = (
        OutboxEvent.objects.using(using)
        .filter(sent_at__lt=now - timedelta(seconds=config.outbox_retention))
        .delete()
    )
    inbox, _ = (
        InboxEntry.objects.using(using)
        .filter(handled_at__lt=now - timedelta(seconds=config.inbox_retention))
        .delete()
    )
    return outbox, inbox


class _WorkerRelay:
    """The relay thread of one worker, started when it is ready and stopped at shutdown."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def on_ready(self, sender: Any = None, **kwargs: Any) -> None:
        if getattr(sender, "app", None) is not self.bus.app or not read_config().relay_in_worker:
            return
        relay = OutboxRelay(self.bus)
        self.thread = threading.Thread(
            target=relay.run, args=(self.stop,), name="celery-events-outbox-relay", daemon=True
        )
        self.thread.start()
        log.info("celery-events: outbox relay started in the worker (database %r)", relay.using)

    def on_shutdown(self, **kwargs: Any) -> None:
        if self.thread is not None:
            self.stop.set()
            self.thread.join(timeout=10)
            self.thread = None


def connect_worker_relay(bus: EventBus) -> None:
    """Run an outbox relay in ``bus``'s worker when ``relay_in_worker`` is on."""
    worker_relay = _WorkerRelay(bus)
    signals.worker_ready.connect(worker_relay.on_ready, weak=False)
    signals.worker_shutdown.connect(worker_relay.on_shutdown, weak=False)
