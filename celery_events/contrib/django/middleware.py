"""Django's middleware: publish on commit (or into the outbox) and ``atomic=True`` handlers.

The project's bus (:func:`~celery_events.contrib.django.get_bus`) has
:class:`DjangoTransactions` as its innermost middleware, after any of the user's:

- publish scope: inside ``transaction.atomic()`` an event is sent after the transaction
  commits, and not at all if it rolls back; with ``CELERY_EVENTS["outbox"] = True`` it is
  written to the outbox table in the caller's transaction instead, and a relay sends it.
  Either way ``require_subscribers`` is checked now and the result has ``deferred=True``.
  Outside a transaction (and without the outbox) the event goes on at once.
- handle scope: an ``atomic=True`` handler runs in a transaction that records the delivery in
  the inbox table (:func:`~celery_events.contrib.django.inbox.run_atomic`); a delivery already
  recorded there is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from functools import partial
from typing import Any

from django.db import transaction

from ...bus import PublishResult
from ...middleware import (
    PUBLISH,
    SKIPPED,
    HandleNext,
    HandlerCall,
    Middleware,
    PublishCall,
    PublishNext,
)
from .conf import read_config
from .inbox import run_atomic

__all__ = ["DjangoTransactions", "relaying"]

# Set while an outbox relay sends stored rows: they were deferred once already.
_relaying: ContextVar[bool] = ContextVar("celery_events_django_relaying", default=False)


@contextmanager
def relaying() -> Iterator[None]:
    """Inside the block, publishes are sent at once: an outbox relay is sending its rows."""
    token = _relaying.set(True)
    try:
        yield
    finally:
        _relaying.reset(token)


class DjangoTransactions(Middleware):
    """Ties publishing and ``atomic=True`` handling to Django's database transactions."""

    transactional = True
    # The outbox row is a database write (and apublish's caller is never in a transaction).
    publishes_with_io = True

    def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
        # A replay, or a relay sending outbox rows, goes out now: deferring it again would
        # either loop through the outbox or tie a dead letter's removal to a rollback.
        if call.origin != PUBLISH or _relaying.get():
            return call_next(call)
        config = read_config()
        if config.outbox:
            call.check_subscribers()
            from .models import OutboxEvent

            OutboxEvent.from_event(call.event, call.data_json).save(
                using=config.database, force_insert=True
            )
            return PublishResult(call.event, deferred=True)
        if not transaction.get_connection(config.database).in_atomic_block:
            return call_next(call)
        call.check_subscribers()
        # After the commit, the rest of the chain sends to whoever subscribes then; the
        # subscriber check was made here, while the caller could still hear of it.
        transaction.on_commit(
            partial(call_next, replace(call, require_subscribers=False)), using=config.database
        )
        return PublishResult(call.event, deferred=True)

    def handle(self, call: HandlerCall, call_next: HandleNext) -> Any:
        if not call.atomic:
            return call_next(call)
        result: list[Any] = []
        if not run_atomic(call.handler, call.event, lambda: result.append(call_next(call))):
            return SKIPPED
        return result[0]
