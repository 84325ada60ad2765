"""Riding out an outage of the state store (inboxes, leases, dead letters) in the delivery path.

A delivery whose state-store call fails is never acknowledged unhandled. Backends raise
:class:`~celery_events.backends.base.StoreError` for every failed call
(:class:`~celery_events.backends.base.StoreUnavailable` when the store could not be reached),
and the delivery:

1. waits for the store in its worker process, calling again with backoff (0.1 s doubling to
   2 s) for up to the ``state_outage_wait`` setting. Every store call of a run is safe to send
   again with the same lease (a claim or release whose reply was lost counts nothing twice), so
   a store that comes back within that time costs a pause and nothing else;
2. then hands the delivery back to the broker: a Celery retry of the same task id after a
   bounded backoff (:func:`hand_back_countdown`), or, if even that cannot be published, a
   requeue. An outage is not a failure of the handler: it counts toward neither its
   ``max_retries`` nor ``max_deliveries``.

Once the handler ran, its success is waited for as long as its time limit allows, since a
delivery handed back then may run the handler again (its effect would happen twice, unless
its inbox record was written after all, which the next run finds).

A delivery handed back while the store may still hold its run's lease (a claim whose reply was
lost, a success or release that could not be written) finds that lease when it runs again; in
the process that handed it back the lease is known to be held by no run (:data:`abandoned`)
and is released at once, elsewhere the run waits until the lease expires (the handler's time
limit plus 30 s) or that process dies, as for any copy whose holder looks alive.

One warning is logged per outage and process, and one when the store is back, rather than one
per delivery.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from .backends.base import StoreError, StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

#: First pause before a store call is sent again, in seconds; it doubles up to STEP_MAX.
FIRST_STEP = 0.1
STEP_MAX = 2.0
#: A delivery handed back is retried after HAND_BACK_FIRST * 2**retries seconds (with jitter),
#: at most HAND_BACK_MAX: minutes-long outages are ridden out without a hot loop.
HAND_BACK_FIRST = 1.0
HAND_BACK_MAX = 60.0


class OutageLog:
    """Says once per outage (per process) that the state store is down, and when it is back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None
        self._handed_back = 0

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def failed(self, what: str, exc: BaseException) -> None:
        with self._lock:
            first = self._since is None
            if first:
                self._since = time.monotonic()
                self._handed_back = 0
        if first:
            # A dead letter's write arrives as RegistryError, the store's error inside it.
            cause = exc if isinstance(exc, StoreError) else exc.__cause__
            kind = "unreachable" if isinstance(cause, StoreUnavailable) else "failing"
            fix = getattr(cause, "fix", None)
            log.warning(
                "celery-events: the state store is %s (%s: %s)%s; deliveries wait for it and"
                " are handed back to the broker if it stays away, none is acknowledged"
                " unhandled",
                kind,
                what,
                exc,
                f" ({fix})" if fix else "",
            )
        else:
            log.debug("celery-events: the state store is still away (%s: %s)", what, exc)

    def recovered(self) -> None:
        if self._since is None:  # the usual case: no lock taken
            return
        with self._lock:
            since, self._since = self._since, None
            handed_back = self._handed_back
        if since is not None:
            log.warning(
                "celery-events: the state store is back after %.1f s; %d delivery(ies) were"
                " handed back to the broker meanwhile",
                time.monotonic() - since,
                handed_back,
            )

    def handed_back(self, task_id: str, what: str, exc: BaseException, countdown: float) -> None:
        with self._lock:
            self._handed_back += 1
            first = self._handed_back == 1
        (log.warning if first else log.info)(
            "celery-events: the state store is still away after waiting (%s: %s); delivery %s"
            " goes back to the broker and runs again in %.1f s (not counted as a failure)",
            what,
            exc,
            task_id,
            countdown,
        )


#: This process's outage log (each pool process keeps its own).
outages = OutageLog()


class AbandonedLeases:
    """Leases of runs in this process that were handed back while the store may hold them."""

    LIMIT = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._leases: dict[str, None] = {}

    def add(self, lease: str) -> None:
        with self._lock:
            self._leases[lease] = None
            while len(self._leases) > self.LIMIT:  # the oldest have long expired in the store
                del self._leases[next(iter(self._leases))]

    def __contains__(self, lease: object) -> bool:
        return lease in self._leases

    def discard(self, lease: str) -> None:
        with self._lock:
            self._leases.pop(lease, None)


#: This process's abandoned leases.
abandoned = AbandonedLeases()


def ride_out(
    call: Callable[[], T],
    what: str,
    patience: float,
    errors: tuple[type[BaseException], ...] = (StoreError,),
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """Return ``call()``, calling it again with backoff while it raises one of ``errors``, for
    up to ``patience`` seconds; then raise the last error. ``what`` names the call in logs."""
    deadline = time.monotonic() + patience
    step = FIRST_STEP
    while True:
        try:
            result = call()
        except errors as exc:
            outages.failed(what, exc)
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            sleep(min(step, left))
            step = min(step * 2, STEP_MAX)
            continue
        outages.recovered()
        return result


def hand_back_countdown(retries: int) -> float:
    """Seconds before a delivery handed back for the ``retries``-th time runs again."""
    delay = min(HAND_BACK_MAX, HAND_BACK_FIRST * 2 ** min(max(retries, 0), 16))
    # Half jitter: deliveries handed back together do not all come back at once.
    return random.uniform(delay / 2, delay)
