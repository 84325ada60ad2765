"""Trace records: what ``celery eventbus trace`` reads (setting ``trace_records``).

Each record is a small JSON text in the state store's trace records
(:class:`~celery_events.backends.base.TraceStore`), grouped by correlation id, so that a
whole conversation is one read, and shared by every service of the store:

- ``e:{event id}``, written once per publish, after it was sent: the event's name, source,
  time, correlation and causation ids, the task id of the delivery whose handler published
  it (``by``), when it was published, and its deliveries (``[service, handler, queue, task
  id]``). A deferred publish (on commit, into the outbox) is recorded as ``deferred`` (no
  deliveries yet), and again when it is sent, after the commit or by the outbox relay
  (``on_published`` hears every send).
- ``b:{event id}``, written with a deferred publish made by a handler: that delivery's task
  id, which the send after the commit or by the outbox relay (outside the handler) no longer
  knows.
- ``d:{task id}``, written by a dead letter's replay: one more delivery of an event.
- ``r:{task id}:{attempt}``, written twice per run of a delivery, in the worker: ``running``
  when its handler starts, then how the run ended (:class:`~celery_events.Outcome`), its
  worker and its timings (Unix times), its error's type and its dead letter's reason. It
  names its event and handler (``{service}.{name}``), so that a delivery whose publish was
  not recorded is still shown. A run whose handler did not run (a skipped duplicate, a delivery
  waiting for a lease) is kept under ``r:{task id}:{attempt}:{outcome}`` so that it never
  hides the run that did.

No event data is kept. Each write is one round trip and renews the group's expiry
(``trace_ttl`` after its last write). A record that cannot be written is logged (once per
process) and forgotten: it never fails a publish or a delivery.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from ..backends.base import TraceStore
from ..envelope import Event
from ..middleware.base import (
    REPLAY,
    HandleNext,
    HandlerCall,
    Middleware,
    Outcome,
    PublishCall,
    PublishNext,
    Settled,
)
from ..results import PublishResult

__all__ = ["TraceRecords", "RUNNING", "event_record", "run_field"]

logger = logging.getLogger(__name__)

#: The state of a run whose handler has started and not ended yet.
RUNNING = "running"

# Outcomes of runs whose handler did not run: kept beside the run that did (see the module).
_BESIDE = {Outcome.DUPLICATE_SKIPPED, Outcome.WAITING, Outcome.HANDED_BACK, Outcome.IGNORED}


def _compact(record: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in record.items() if v is not None}, separators=(",", ":"))


def event_record(
    result: PublishResult, published_at: float, by: str | None = None, deferred: bool = False
) -> str:
    """The ``e:`` record of one sent (or ``deferred``) event; ``by`` is the task id of the
    delivery whose handler published it, if one did."""
    event = result.event
    return _compact(
        {
            "name": event.name,
            "source": event.source,
            "time": event.time.isoformat(),
            "correlation": event.correlation_id,
            "causation": event.causation_id,
            "by": by,
            "deferred": deferred or None,
            "published": round(published_at, 6),
            "deliveries": [[d.service, d.handler, d.queue, d.task_id] for d in result.deliveries],
        }
    )


def run_field(task_id: str, attempt: int, outcome: str = RUNNING) -> str:
    """The field of one run's record."""
    if outcome in _BESIDE:
        return f"r:{task_id}:{attempt}:{outcome}"
    return f"r:{task_id}:{attempt}"


class TraceRecords(Middleware):
    """Records each event, each delivery and each run's state, worker and timings."""

    # Each publish writes its record to the state store (Redis) as it is sent.
    publishes_with_io = True

    def __init__(self, bus: Any) -> None:
        # Only kept: the bus is not built yet (its backend, settings and service are read
        # when a record is written).
        self.bus = bus
        self._store: TraceStore | None = None
        self._warned = False
        self._lock = threading.Lock()

    # -- the store ---------------------------------------------------------------------------

    def store(self) -> TraceStore:
        """The state store's trace records; ConfigurationError where it keeps none."""
        store = self._store
        if store is None:
            store = self._store = self.bus.backend.state.traces()
        return store

    def _write(self, event: Event, fields: dict[str, str]) -> None:
        try:
            self.store().write(
                event.correlation_id, [event.id], fields, self.bus.settings.trace_ttl
            )
        # A store that is away (StoreError) or anything else: a record is never worth a
        # publish or a delivery.
        except Exception as exc:
            self._warn(exc)

    def _warn(self, exc: BaseException) -> None:
        with self._lock:
            warned, self._warned = self._warned, True
        if not warned:
            logger.warning(
                "Could not write a trace record (%s); going on without it. Later failures"
                " of this process are not logged.",
                exc,
            )

    # -- scopes ------------------------------------------------------------------------------

    def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
        # Asked before sending, so that a store that keeps no records is a ConfigurationError
        # the caller sees before anything is sent.
        self.store()
        result = call_next(call)
        if result.deferred:
            # Sent later (after a commit, or by an outbox relay): on_published records the
            # send and its deliveries then, replacing this record. Who published it is kept
            # apart (b:), since a relay sends it from outside any handler.
            by = self._delivery()[0] if result.event.causation_id else None
            fields = {f"e:{result.event.id}": event_record(result, time.time(), by, deferred=True)}
            if by is not None:
                fields[f"b:{result.event.id}"] = _compact({"by": by})
            self._write(result.event, fields)
        return result

    def on_published(self, result: PublishResult, origin: str) -> None:
        now = time.time()
        if origin == REPLAY:
            fields = {
                f"d:{d.task_id}": _compact(
                    {"event": result.event.id, "service": d.service, "handler": d.handler,
                     "queue": d.queue, "replayed": round(now, 6)}
                )
                for d in result.deliveries
            }
        else:
            by = self._delivery()[0] if result.event.causation_id else None
            fields = {f"e:{result.event.id}": event_record(result, now, by)}
        self._write(result.event, fields)

    def handle(self, call: HandlerCall, call_next: HandleNext) -> Any:
        record = {
            "event": call.event.id,
            "handler": call.handler,
            "state": RUNNING,
            "attempt": call.attempt,
            "host": self._delivery()[1],
            "handler_started": round(time.time(), 6),
        }
        self._write(call.event, {run_field(call.task_id, call.attempt): _compact(record)})
        return call_next(call)

    def on_settled(self, settled: Settled) -> None:
        event = settled.event
        if event is None:  # an unreadable envelope names no conversation
            return
        error = settled.error
        record = {
            "event": event.id,
            "handler": settled.handler,
            "state": settled.outcome,
            "attempt": settled.attempt,
            "host": settled.hostname,
            "started": _rounded(settled.started_at),
            "handler_started": _rounded(settled.handler_started_at),
            "handler_finished": _rounded(settled.handler_finished_at),
            "finished": _rounded(settled.finished_at),
            "error": None if error is None else type(error).__name__,
            "reason": settled.reason,
            "countdown": settled.countdown,
            "redelivered": settled.redelivered or None,
        }
        field = run_field(settled.task_id, settled.attempt, settled.outcome)
        self._write(event, {field: _compact(record)})

    def _delivery(self) -> tuple[str | None, str | None]:
        """The task id and worker of the delivery this process is running, if any."""
        task = self.bus.app.current_worker_task
        request = getattr(task, "request", None)
        task_id, hostname = getattr(request, "id", None), getattr(request, "hostname", None)
        return (
            task_id if isinstance(task_id, str) else None,
            hostname if isinstance(hostname, str) else None,
        )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
