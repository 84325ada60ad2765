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
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import IntegrityError, transaction

from ...envelope import Event
from .conf import read_config

__all__ = ["run_atomic"]


def run_atomic(handler: str, event: Event, call: Callable[[], object]) -> bool:
    """Run ``call()`` in a transaction that records ``(event.id, handler)`` in the inbox.

    Returns ``False`` without calling when that delivery was already committed.
    """
    from .models import InboxEntry

    using = read_config().database
    with transaction.atomic(using=using):
        try:
            with transaction.atomic(using=using):
                InboxEntry.objects.using(using).create(
                    event_id=event.id, handler=handler, event_name=event.name
                )
        except IntegrityError:
            return False
        call()
    return True
