"""Keeping the worker's event-loop timer as small as what is still due on it.

Every delivery runs with a hard time limit (the handler's ``time_limit``, 300 s by default: the
inbox lease is built on it). In a prefork worker on an event loop (Redis and RabbitMQ brokers),
Celery's pool enforces that limit with an entry on the loop's kombu timer, one per task, which
it cancels when the task ends. kombu's timer is a heap that never removes a cancelled entry: it
only skips it once its time comes. So the worker's main process keeps about 500 bytes per
delivery for ``time_limit`` seconds after the delivery ended: at 1,000 deliveries/s and the
default limit, 300,000 dead entries and some 150 MB, and Celery's reconnect copies and sorts
that whole heap (``celery.worker.loops._timer_entries``). It is Celery's behaviour for any task
with a time limit (celery/celery#1129, #5200), not something deliveries add; the bus only makes
every task have one.

:class:`CancelledTimerSweep`, a consumer bootstep the bus adds to its workers, drops the
cancelled entries from the heap every :data:`SWEEP_INTERVAL` seconds, in the event loop's own
thread (the only one that touches that timer), so the heap holds what ran in the last interval
and what is still due. Nothing that is due is dropped or delayed.
"""

from __future__ import annotations

import heapq
from typing import Any

from celery import bootsteps

#: Seconds between two sweeps of the event loop's timer.
SWEEP_INTERVAL = 1.0


def drop_cancelled(timer: Any) -> int:
    """Remove the cancelled entries of kombu ``timer``'s heap; return how many there were.

    The heap list is changed in place: kombu's timer iterator holds that list, not the timer.
    """
    queue: list[Any] = timer._queue
    live = [event for event in queue if not event.entry.canceled]
    dropped = len(queue) - len(live)
    if dropped:
        heapq.heapify(live)
        queue[:] = live
    return dropped


class CancelledTimerSweep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Sweeps cancelled entries off the event loop's timer (see the module docstring).

    A consumer step, so it starts again with the consumer after a lost broker connection
    (Celery cancels the timer entries of a failed connection, this one among them).
    """

    label = "celery-events timer sweep"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        self._entry: Any = None
        super().__init__(parent, **kwargs)

    def start(self, parent: Any) -> None:
        hub = getattr(parent, "hub", None)
        if hub is None:  # no event loop: the pool keeps no timer entries there
            return
        self._entry = hub.call_repeatedly(SWEEP_INTERVAL, drop_cancelled, hub.timer)

    def stop(self, parent: Any) -> None:
        if self._entry is not None:
            self._entry.cancel()
            self._entry = None

    shutdown = stop
