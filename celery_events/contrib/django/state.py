"""The state store in the Django database: ``CELERY_EVENTS["state"] = "database"``.

The inbox, the leases, the delivery records and the dead letters live in four tables of the
``CELERY_EVENTS["database"]`` database instead of the broker's Redis (``models.py``):

- ``celery_events_lease``: one row per (handler, event id), ``done`` once the handler
  succeeded (until ``inbox_ttl``), or the lease of the run holding it (until the handler's time
  limit plus a margin). A claim locks the row (``SELECT ... FOR UPDATE``, the unique
  constraint making sure there is one row to lock), so two copies of one delivery never both
  run;
- ``celery_events_process``: one row per process running deliveries, whose ``expires_at`` a
  daemon thread pushes :data:`ALIVE_TTL` seconds ahead every :data:`RENEW_INTERVAL`. A lease
  names its process; a copy that finds a lease whose process row expired (the worker was
  killed, its host lost) takes the lease over, so a killed worker's delivery runs again within
  about :data:`ALIVE_TTL` seconds, never on the strength of a pid;
- ``celery_events_delivery``: per task id, runs begun and not finished (``starts``: poison
  detection) and failures, as the Redis store keeps them;
- ``celery_events_dead_letter``: each service's dead letters, as JSON text.

Every time is the database's clock (``Now()``), so hosts need not agree on the time. On a
Redis broker the lost-delivery ledger stays in Redis (publishers write it with the fan-out),
kept beside this inbox by the backend; ``bus.redis_effects()`` is not available
(``transactional_effects`` is off: the inbox record is not in Redis). The database must lock rows
(``select_for_update``): PostgreSQL (the reference), MySQL, MariaDB or Oracle; SQLite is refused
(system check ``celery_events.E006``).

Every failed call raises :class:`~celery_events.backends.base.StoreUnavailable` (the
database could not be reached: ``OperationalError``, ``InterfaceError``) or
:class:`~celery_events.backends.base.StoreError` (any other ``DatabaseError``), its connection
closed so the next call opens a fresh one; the worker waits for the database, then hands the
delivery back, and never acknowledges it unhandled (``celery_events/_outage.py``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError, connections, transaction
from django.db.models.functions import Now
from django.utils import timezone

from ...backends.base import Claim, StoreError, StoreUnavailable, TraceStore
from ...errors import ConfigurationError, describe

__all__ = [
    "ALIVE_TTL",
    "RENEW_INTERVAL",
    "DatabaseState",
    "DatabaseInbox",
    "DatabaseDeadLetters",
    "check_database",
]

log = logging.getLogger(__name__)

#: Seconds after its last renewal that a process counts as dead (as the Redis store's).
ALIVE_TTL = 12.0
#: Seconds between two renewals of a process's row; several may fail before it expires.
RENEW_INTERVAL = 2.0
#: Seconds between two deletions of expired rows by a process's renewal thread.
PURGE_INTERVAL = 300.0
Alias = str | Callable[[], str]


def check_database(using: str) -> None:
    """Raise :class:`ConfigurationError` if database ``using`` cannot hold the state store."""
    connection = connections[using]
    if not connection.features.has_select_for_update:
        raise ConfigurationError(
            f"CELERY_EVENTS['state'] is 'database', but the database {using!r}"
            f" ({connection.vendor}) cannot lock rows (SELECT ... FOR UPDATE), so two workers"
            " could run one delivery at once. Keep the state store in PostgreSQL (or MySQL,"
            " MariaDB, Oracle) with CELERY_EVENTS['database'], or drop 'state' to keep it on"
            " the broker."
        )


@contextmanager
def _translated(using: str | None = None) -> Iterator[None]:
    """Turn the database's errors into store errors: :class:`StoreUnavailable` for a database
    that cannot be reached (``OperationalError``, ``InterfaceError``: a later try may succeed),
    :class:`StoreError` for the rest. With ``using``, a failed call's connection is closed, so
    the next call opens a fresh one instead of finding it broken."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        _drop_connection(using)
        raise StoreUnavailable(describe(exc)) from exc
    except DatabaseError as exc:
        _drop_connection(using)
        raise StoreError(describe(exc)) from exc


def _drop_connection(using: str | None) -> None:
    # Inside a caller's transaction the connection is the caller's to handle.
    if using is not None and not connections[using].in_atomic_block:
        connections[using].close()


def _after(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)


def _ms(delta: timedelta) -> int:
    return max(0, int(delta.total_seconds() * 1000))


# -- liveness ------------------------------------------------------------------------------


class _Liveness:
    """This process's token and the thread that keeps its ``WorkerProcess`` rows alive."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self.pid = os.getpid()
        self.token = uuid.uuid4().hex
        self._aliases: list[str] = []
        self._thread: threading.Thread | None = None
        self._purged: dict[str, float] = {}

    def after_fork(self) -> None:
        # A forked child (a prefork pool process) is another process: its own token and rows.
        self._reset()

    def keep_alive(self, using: str) -> str:
        """Make sure this process's row exists in ``using`` and is renewed; return the token.

        The first call for a database writes the row before it returns."""
        if self.pid != os.getpid():  # forked without the fork hook
            self.after_fork()
        if using in self._aliases:
            return self.token
        with self._lock:
            if using not in self._aliases:
                self._renew(using)
                self._aliases.append(using)
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._loop, name="celery-events-db-alive", daemon=True
                    )
                    self._thread.start()
        return self.token

    def _renew(self, using: str) -> None:
        from .models import WorkerProcess

        expires = Now() + timedelta(seconds=ALIVE_TTL)
        with transaction.atomic(using=using):
            updated = WorkerProcess.objects.using(using).filter(token=self.token).update(
                expires_at=expires
            )
            if not updated:
                WorkerProcess.objects.using(using).create(
                    token=self.token,
                    host=socket.gethostname()[:255],
                    pid=os.getpid(),
                    expires_at=expires,
                )

    def _loop(self) -> None:
        while True:
            time.sleep(RENEW_INTERVAL)
            for using in list(self._aliases):
                try:
                    self._renew(using)
                    self._purge(using)
                except Exception as exc:  # the database restarting, say: the next round tries
                    log.warning("celery-events: could not renew this process's row: %s", exc)
                finally:
                    # A fresh connection each round: none is held idle between renewals (nor
                    # left broken by a database restart).
                    connections[using].close()

    def _purge(self, using: str) -> None:
        # Expired rows mean nothing (every read compares expires_at); delete them now and then.
        now = time.monotonic()
        if now - self._purged.get(using, 0.0) < PURGE_INTERVAL:
            return
        self._purged[using] = now
        from .models import DeliveryLease, DeliveryRecord, WorkerProcess

        for model in (DeliveryLease, DeliveryRecord, WorkerProcess):
            model.objects.using(using).filter(expires_at__lt=Now()).delete()


_liveness = _Liveness()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_liveness.after_fork)


# -- the inbox -----------------------------------------------------------------------------


class DatabaseInbox:
    """One service's delivery bookkeeping in the database (see the module docstring).

    Same semantics and return values as the Redis inbox, so the delivery task is the same.
    """

    #: The broker's messages are acknowledged by the worker.
    acknowledges = False

    def __init__(self, using: Alias) -> None:
        self._using = using

    @property
    def using(self) -> str:
        """The database alias, read now (``CELERY_EVENTS["database"]`` may be overridden)."""
        return self._using if isinstance(self._using, str) else self._using()

    def process_token(self) -> str:
        """This process's token, its row kept alive; leases name it."""
        using = self.using
        with _translated(using):
            return _liveness.keep_alive(using)

    def new_effects(self) -> None:
        """None: ``bus.redis_effects()`` needs the Redis state store."""
        return None

    def is_done(self, handler: str, event_id: str, *, event_time: float) -> bool:
        from .models import DeliveryLease

        with _translated():
            return bool(
                DeliveryLease.objects.using(self.using)
                .filter(
                    handler=handler,
                    event_id=event_id,
                    state=DeliveryLease.DONE,
                    expires_at__gt=Now(),
                )
                .exists()
            )

    def _locked_lease(self, using: str, handler: str, event_id: str) -> Any:
        """The (handler, event id) row, made if missing, locked until the transaction ends."""
        from .models import DeliveryLease

        rows = DeliveryLease.objects.using(using)
        # ON CONFLICT DO NOTHING: there is then exactly one row to lock, whoever made it.
        rows.bulk_create(
            [DeliveryLease(handler=handler, event_id=event_id, expires_at=timezone.now())],
            ignore_conflicts=True,
        )
        return rows.select_for_update().annotate(db_now=Now()).get(handler=handler, event_id=event_id)

    def _locked_record(self, using: str, task_id: str, now: datetime) -> Any:
        from .models import DeliveryRecord

        rows = DeliveryRecord.objects.using(using)
        rows.bulk_create([DeliveryRecord(task_id=task_id, expires_at=now)], ignore_conflicts=True)
        return rows.select_for_update().get(task_id=task_id)

    def claim(
        self,
        handler: str,
        event_id: str,
        task_id: str,
        *,
        event_time: float,
        lease: str,
        lease_seconds: float,
        use_inbox: bool,
    ) -> Claim:
        """Take the delivery's lease, unless it is done or a live process holds it.

        A database that cannot be reached raises :class:`StoreUnavailable`; the worker waits
        for it and never acknowledges the delivery meanwhile. The same ``lease`` asked again
        (a commit whose reply was lost) finds its own row and counts no second start.
        """
        from .models import DeliveryLease, WorkerProcess

        using = self.using
        with _translated(using):
            with transaction.atomic(using=using):
                now: datetime | None = None
                row = None
                if use_inbox:
                    row = self._locked_lease(using, handler, event_id)
                    now = row.db_now
                    assert now is not None
                    if row.state == DeliveryLease.DONE and row.expires_at > now:
                        return Claim("done")
                    if (
                        row.state == DeliveryLease.LEASE
                        and row.expires_at > now
                        and row.lease != lease
                    ):
                        alive = (
                            WorkerProcess.objects.using(using)
                            .filter(token=row.process)
                            .values_list("expires_at", flat=True)
                            .first()
                        )
                        if alive is not None and alive > now:
                            # Busy until the lease ends, or until its process counts as dead.
                            ttl = min(row.expires_at - now, alive - now)
                            return Claim("busy", holder=row.lease, holder_ttl_ms=_ms(ttl))
                record = self._locked_record(using, task_id, now or timezone.now())
                record_now = now or timezone.now()
                if row is None or row.lease != lease or row.state != DeliveryLease.LEASE:
                    record.starts += 1
                record.expires_at = _after(record_now, lease_seconds * 4 + 86400)
                record.save(update_fields=["starts", "expires_at"])
                if row is not None:
                    row.state = DeliveryLease.LEASE
                    row.lease = lease
                    row.process = _process_of(lease)
                    row.expires_at = _after(record_now, lease_seconds)
                    row.save(update_fields=["state", "lease", "process", "expires_at"])
                return Claim(
                    "run",
                    starts=record.starts,
                    failures=record.failures,
                    first_failed_at=record.first_failed_at,
                )

    def succeed(
        self,
        handler: str,
        event_id: str,
        task_id: str,
        *,
        event_time: float,
        lease: str,
        use_inbox: bool,
        ttl_seconds: float,
        effects: Any | None = None,
        delivery_tag: str | None = None,
    ) -> bool:
        """Record success; False, recording nothing, when another run took the lease over."""
        from .models import DeliveryLease, DeliveryRecord

        using = self.using
        with _translated(using), transaction.atomic(using=using):
            if use_inbox:
                row = self._locked_lease(using, handler, event_id)
                if (
                    row.state == DeliveryLease.LEASE
                    and row.expires_at > row.db_now
                    and row.lease != lease
                ):
                    return False
                row.state = DeliveryLease.DONE
                row.lease = ""
                row.process = ""
                row.expires_at = _after(row.db_now, ttl_seconds)
                row.save(update_fields=["state", "lease", "process", "expires_at"])
            DeliveryRecord.objects.using(using).filter(task_id=task_id).delete()
        return True

    def release(
        self,
        handler: str,
        event_id: str,
        task_id: str,
        *,
        lease: str,
        failed: bool,
        next_due_in: float = 0.0,
        forget: bool = False,
    ) -> int:
        """End a run that is retried (``forget=False``) or given up; returns the failures.

        (``next_due_in`` is for a lost-delivery ledger, which this store does not keep.)
        """
        from .models import DeliveryLease, DeliveryRecord

        using = self.using
        with _translated(using):
            with transaction.atomic(using=using):
                DeliveryLease.objects.using(using).filter(
                    handler=handler, event_id=event_id, state=DeliveryLease.LEASE, lease=lease
                ).delete()
                if forget:
                    DeliveryRecord.objects.using(using).filter(task_id=task_id).delete()
                    return 0
                record = self._locked_record(using, task_id, timezone.now() + timedelta(days=1))
                record.starts = 0
                if failed:
                    record.failures += 1
                    if record.first_failed_at is None:
                        record.first_failed_at = time.time()
                record.save(update_fields=["starts", "failures", "first_failed_at"])
                return int(record.failures)

    def forget(self, task_id: str) -> None:
        """Drop a delivery's bookkeeping (it was dead-lettered before it could be claimed)."""
        from .models import DeliveryRecord

        using = self.using
        with _translated(using):
            DeliveryRecord.objects.using(using).filter(task_id=task_id).delete()


def _process_of(lease: str) -> str:
    import json

    try:
        process = json.loads(lease).get("process")
    except (ValueError, AttributeError):
        process = None
    return str(process)[:64] if process else ""


# -- dead letters --------------------------------------------------------------------------


class DatabaseDeadLetters:
    """One service's dead letters in the ``celery_events_dead_letter`` table."""

    def __init__(self, using: Alias, service: str) -> None:
        self._using = using
        self.service = service

    def _rows(self) -> Any:
        from .models import DeadLetterRecord

        using = self._using if isinstance(self._using, str) else self._using()
        return DeadLetterRecord.objects.using(using).filter(service=self.service)

    def add(self, id: str, record: str, score: float) -> None:
        from .models import DeadLetterRecord

        rows = self._rows()
        with _translated(rows.db):
            DeadLetterRecord.objects.using(rows.db).update_or_create(
                service=self.service, letter_id=id, defaults={"record": record, "score": score}
            )

    def trim(self, limit: int) -> list[str]:
        with _translated():
            rows = self._rows()
            excess = rows.count() - limit
            if excess <= 0:
                return []
            oldest = list(
                rows.order_by("score", "letter_id").values_list("letter_id", flat=True)[:excess]
            )
        self.remove(oldest)
        return oldest

    def newest_first(self) -> list[tuple[str, float]]:
        with _translated():
            pairs = self._rows().order_by("-score", "-letter_id").values_list("letter_id", "score")
            return [(str(i), float(s)) for i, s in pairs]

    def get(self, id: str) -> tuple[bytes, float] | None:
        with _translated():
            found = self._rows().filter(letter_id=id).values_list("record", "score").first()
        if found is None:
            return None
        return found[0].encode(), float(found[1])

    def load(self, ids: Sequence[str]) -> list[bytes | None]:
        if not ids:
            return []
        with _translated():
            records = dict(self._rows().filter(letter_id__in=list(ids)).values_list("letter_id", "record"))
        return [records[i].encode() if i in records else None for i in ids]

    def remove(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with _translated():
            self._rows().filter(letter_id__in=list(ids)).delete()

    def count(self) -> int:
        with _translated():
            return int(self._rows().count())


# -- the store -----------------------------------------------------------------------------


class DatabaseState:
    """Inboxes and dead letters of every service in one Django database.

    ``using`` is a database alias, or a function returning one (read on each call, as
    ``CELERY_EVENTS["database"]`` is). The project's bus makes one when
    ``CELERY_EVENTS["state"]`` is ``"database"``; another bus can share the tables:

    >>> from celery import Celery
    >>> from celery_events import EventBus
    >>> from celery_events.contrib.django.state import DatabaseState
    >>> app = Celery("orders", broker="redis://localhost:6379/0")
    >>> bus = EventBus(app, service="orders", state=DatabaseState("default"))
    >>> bus.dead_letters.list()
    []
    """

    def __init__(self, using: Alias = "default") -> None:
        self._using = using

    @property
    def description(self) -> str:
        """Where it is, for people (``celery eventbus status``)."""
        using = self._using if isinstance(self._using, str) else self._using()
        return f"the Django database {using!r}"

    def inbox(self, service: str) -> DatabaseInbox:
        check_database(self._using if isinstance(self._using, str) else self._using())
        return DatabaseInbox(self._using)

    def dead_letters(self, service: str) -> DatabaseDeadLetters:
        return DatabaseDeadLetters(self._using, service)

    def dead_letter_services(self) -> list[str]:
        from .models import DeadLetterRecord

        using = self._using if isinstance(self._using, str) else self._using()
        with _translated():
            found = DeadLetterRecord.objects.using(using).values_list("service", flat=True).distinct()
            return sorted(set(found))

    def traces(self) -> TraceStore:
        """The database keeps no trace records: a ConfigurationError (on a Redis broker the
        bus keeps them in the broker's Redis instead, beside the ledger)."""
        raise ConfigurationError(
            f"trace_records is on, but {self.description} keeps no trace records. Use a"
            " redis:// broker (they are kept there, beside the inbox in the database), or"
            " turn trace_records off."
        )

    def close(self) -> None:
        """Django owns the connections."""
