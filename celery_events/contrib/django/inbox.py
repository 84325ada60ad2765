"""The database inbox: an atomic handler's effects and its inbox row commit together.

``@bus.subscribe(pattern, atomic=True)`` makes the handle scope of Django's middleware
(``middleware.py``) call :func:`run_atomic`, which runs
the handler inside ``transaction.atomic()`` and inserts ``(event id, handler)`` into the inbox
table in that same transaction. A repeated delivery (a redelivery after a crash, a relay that
resent an event) finds the row and is skipped, so the handler's database effects happen
exactly once. A handler that raises rolls back its effects and its inbox row together, so a
retry runs it again. Effects outside the database (e-mails, HTTP calls) are still at least once.

Two deliveries of one event running at the same moment are serialized by the table's unique
constraint: the second insert waits for the first transaction, and skips if it committed.

A database that cannot be reached (``OperationalError`` or ``InterfaceError``, and the
connection no longer answers) is the state store being away, not the handler failing: it is
raised as :class:`~celery_events.backends.base.StoreUnavailable`, and the worker hands the
delivery back without counting a failure. Nothing was committed then (a commit whose reply was
lost is found by the next run's inbox insert, which skips).
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import IntegrityError, InterfaceError, OperationalError, connections, transaction

from ...backends.base import StoreUnavailable
from ...envelope import Event
from ...errors import describe
from .conf import read_config

__all__ = ["run_atomic"]


def run_atomic(handler: str, event: Event, call: Callable[[], object]) -> bool:
    """Run ``call()`` in a transaction that records ``(event.id, handler)`` in the inbox.

    Returns ``False`` without calling when that delivery was already committed.
    """
    from .models import InboxEntry

    using = read_config().database
    try:
        with transaction.atomic(using=using):
            try:
                with transaction.atomic(using=using):
                    InboxEntry.objects.using(using).create(
                        event_id=event.id, handler=handler, event_name=event.name
                    )
            except IntegrityError:
                return False
            call()
    except (OperationalError, InterfaceError) as exc:
        if _unreachable(using):
            raise StoreUnavailable(describe(exc)) from exc
        raise  # a deadlock, a lock timeout: the handler's failure, retried as such
    return True


def _unreachable(using: str) -> bool:
    """Whether database ``using`` no longer answers (its connection is then closed, so the
    next delivery opens a fresh one)."""
    connection = connections[using]
    if connection.in_atomic_block:  # a caller's transaction: not ours to judge or close
        return False
    try:
        usable = connection.connection is not None and connection.is_usable()
    except Exception:
        usable = False
    if not usable:
        connection.close()
    return not usable
