"""The Celery task that runs one handler for one delivery, on the subscriber's worker.

Each run goes: read the envelope (invalid: dead letter) → ask the inbox (already handled:
skip and ack; another copy running: come back later; started too often without finishing:
poison, dead letter) → run the handler → record success in the inbox (with any Redis effects
the handler queued), or retry with backoff through Celery's own retry, or give up into the
dead letters. The message is acknowledged only after one of these, and requeued if the worker
dies, so no delivery is acknowledged without being handled or dead-lettered.

Every call to the state store goes through :func:`~celery_events._outage.ride_out`: a store
that is away makes the delivery wait, then go back to the broker as a retry of the same task
id, never acknowledged unhandled and never counted as a failure of the handler
(``_outage.py`` says how).
"""

from __future__ import annotations

import json
import logging
import random
import time
import traceback
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from celery import Celery, Task
from celery.exceptions import Reject as CeleryReject
from celery.exceptions import Retry as CeleryRetry

from ._outage import abandoned, hand_back_countdown, outages, ride_out
from .backends.base import Claim, Inbox, StoreError, Transport, lease_value
from .contracts.middleware import VersionNotAccepted
from .contracts.schemas import Schema
from .deadletters import DeadLetterStore, Reason, new_letter
from .envelope import Event
from .errors import (
    ConfigurationError,
    DeliveryRefused,
    InvalidEnvelope,
    PoisonMessageError,
    RegistryError,
)
from .middleware.base import SKIPPED, HandlerCall, Outcome, Receipt, Settled
from .middleware.chain import MiddlewareChain
from .outcomes import Reject, Retry
from .settings import Settings
from .trust._masking import masking_strategy
from .trust.fields import SENSITIVE
from .trust.sensitive import refuse_encrypted

log = logging.getLogger(__name__)

#: The event whose handler is running in this context, so that events published from inside
#: a handler carry its correlation id and name it as their cause.
current_event: ContextVar[Event | None] = ContextVar("celery_events_current_event", default=None)

#: Effects a running handler queued to commit together with its inbox record (on Redis, a
#: transaction pipeline: ``bus.redis_effects()``); None where the state store keeps none.
current_effects: ContextVar[Any | None] = ContextVar(
    "celery_events_current_effects", default=None
)

HandlerFunc = Callable[[Event], Any]

# How much longer than the handler's time limit a lease lives, and a retry may take to show up.
LEASE_MARGIN = 30.0
# Waiting for the state store stops this long before the handler's time limit would kill the
# process (the delivery is then handed back rather than lost with the process).
TIME_LIMIT_MARGIN = 5.0
# A dead letter's write fails as RegistryError (the store's StoreError inside it).
DEAD_LETTER_ERRORS = (StoreError, RegistryError)
#: What a delivery task returns when the inbox's success record also acknowledged its message
#: on the broker (``Inbox.acknowledges``): the worker's request then skips its own ack's
#: round trip (``_request.py``). Any other return: the worker acks as usual.
ACKED_WITH_SUCCESS = "celery-events: acknowledged with the success record"

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """When a failing handler is retried, and how long it waits (``Handler.retry``)."""

    max_retries: int
    backoff: float
    backoff_max: float
    jitter: bool
    retry_for: tuple[type[BaseException], ...] = (Exception,)
    dont_retry_for: tuple[type[BaseException], ...] = ()

    def should_retry(self, exc: BaseException, failures: int) -> bool:
        """``failures`` counts this one; a handler gets ``max_retries`` retries in all."""
        if isinstance(exc, Retry):
            return failures <= self.max_retries
        if isinstance(exc, self.dont_retry_for) or not isinstance(exc, self.retry_for):
            return False
        return failures <= self.max_retries

    def delay(self, failures: int, asked: float | None = None) -> float:
        """Seconds to wait before retry number ``failures`` (1 for the first retry)."""
        if asked is not None:
            if asked > self.backoff_max:
                log.warning(
                    "celery-events: Retry(delay=%s) is longer than retry_backoff_max (%s);"
                    " waiting %s s",
                    asked,
                    self.backoff_max,
                    self.backoff_max,
                )
            return min(float(asked), self.backoff_max)
        delay = min(self.backoff_max, self.backoff * 2 ** max(failures - 1, 0))
        # Full jitter spreads the retries of many deliveries that failed together.
        return random.uniform(0, delay) if self.jitter else delay


@dataclass(frozen=True)
class Handler:
    """A subscribed function and how its deliveries are run, as ``@bus.subscribe`` made it.

    ``bus.handlers`` lists them (read-only):

    >>> from celery import Celery
    >>> from celery_events import EventBus
    >>> bus = EventBus(Celery("orders", broker="memory://"), service="orders")
    >>> @bus.subscribe("user.registered")
    ... def welcome_order(event): ...
    >>> [(h.task_name, h.pattern, h.queue) for h in bus.handlers]
    [('orders.welcome_order', 'user.registered', 'events.orders')]
    """

    pattern: str
    func: HandlerFunc
    #: The Celery task name, ``{service}.{name}``.
    task_name: str
    queue: str
    retry: RetryPolicy
    #: Skip deliveries whose event this handler already handled (and never run two copies).
    inbox: bool = True
    #: Run inside the bus's transaction runner (a database transaction with an inbox row).
    atomic: bool = False
    time_limit: float = 300.0
    task_options: dict[str, Any] = field(default_factory=dict)
    #: Dotted paths of the data this worker masks in argument texts (``sensitive=``).
    sensitive: tuple[str, ...] = ()
    #: The versions of the matching events it accepts (``versions=``); empty: every one.
    versions: tuple[int, ...] = ()
    #: The schema it accepts itself (``schema=``, or its pydantic parameter's), or ``None``.
    accepts: Schema | None = None
    #: How it is called with an event, for a function taking a pydantic model (parsed from
    #: the data); ``None``: ``func(event)``.
    invoke: Callable[[Event], Any] | None = field(default=None, repr=False, compare=False)

    def call(self, event: Event) -> Any:
        """Run the function on ``event``, as a delivery does (the data parsed into its
        model parameter, if it has one)."""
        invoke = self.invoke
        return self.func(event) if invoke is None else invoke(event)

    @property
    def lease_seconds(self) -> float:
        return self.time_limit + LEASE_MARGIN


class DeliveryHost(Protocol):
    """What a delivery needs from its bus; the bus passes itself (no import of ``bus``)."""

    service: str
    settings: Settings

    def _delivery_queue(self, handler: Handler, routing_key: str | None) -> str:
        """The broker queue a delivery of ``handler`` sent with ``routing_key`` came from."""
        ...

    def _retry_route(self, handler: Handler, countdown: float) -> tuple[float, dict[str, Any]]:
        """The countdown and ``Task.retry`` options that bring a retry back to the handler's
        own queue."""
        ...

    @property
    def inbox(self) -> Inbox: ...

    @property
    def transport(self) -> Transport: ...

    @property
    def dead_letters(self) -> DeadLetterStore: ...

    @property
    def middleware(self) -> MiddlewareChain: ...


def register_task(app: Celery, bus: DeliveryHost, handler: Handler) -> Task:
    """Register the Celery task that delivers events to ``handler`` in ``app``."""

    def deliver(self: Task, *args: object, **kwargs: object) -> str | None:
        drop_steering(self.request, handler.task_name)
        run = _Run(bus, handler, self)
        run.run(args, kwargs)
        # Tells the worker's request (``_request.py``) that its ack has nothing left to do.
        return ACKED_WITH_SUCCESS if run.acked else None

    deliver.__doc__ = handler.func.__doc__
    options: dict[str, Any] = {
        "name": handler.task_name,
        "bind": True,
        # Acknowledge after the handler ran, and requeue if the worker process dies, so that
        # a crash means a redelivery rather than a lost event.
        "acks_late": True,
        "reject_on_worker_lost": True,
        "acks_on_failure_or_timeout": True,
        "ignore_result": True,
        # The bus's retry policy counts failures itself (busy-lease waits are retries too);
        # Celery's own limit (3 by default) would make a later retry raise the handler's
        # exception instead, and the delivery would be acked without a dead letter.
        "max_retries": None,
        "typing": False,
        "time_limit": handler.time_limit,
        # A shared task would be added to every Celery app in the process, including other
        # services' apps in tests and monoliths.
        "shared": False,
    }
    # What `celery inspect reserved` lists of a delivery is its (masked) argument text, and an
    # ack the inbox's success record already made is not sent again.
    options["Request"] = "celery_events._request:DeliveryRequest"
    if handler.sensitive:
        # Masks the argument text Celery's worker logs and sends to Flower.
        options["Strategy"] = masking_strategy(handler.sensitive)
    options.update(handler.task_options)
    task: Task = app.task(**options)(deliver)
    return task


#: What makes a Celery worker run other tasks after (or instead of) this one.
STEERING = ("callbacks", "errbacks", "chain", "chord")


def drop_steering(request: Any, task_name: str) -> None:
    """Make sure nothing but the handler runs from a delivery.

    The screening transport refuses deliveries that carry callbacks, errbacks, a chain or a
    chord; on brokers without it they would reach Celery's tracer, which runs them after the
    handler. They are cleared on the running request before the tracer reads them, which also
    keeps them out of a retry's message.
    """
    found = [name for name in STEERING if getattr(request, name, None)]
    for name in STEERING:
        setattr(request, name, None)
    if found:
        log.warning(
            "celery-events: delivery %s of %s carried %s; nothing but the handler runs from an"
            " event queue, so they were dropped",
            getattr(request, "id", None),
            task_name,
            ", ".join(found),
        )


def call_handler(
    chain: MiddlewareChain, handler: Handler, event: Event, call: HandlerCall | None
) -> bool:
    """Run ``handler`` on ``event`` inside the chain's handle scopes, as a worker does
    (``call`` describes the delivery; None when the chain has no scope that would see it).

    Returns False when a scope skipped the call as already handled (Django's database inbox
    for an ``atomic=True`` handler). An ``atomic=True`` handler needs a transactional
    middleware; without one this raises :class:`ConfigurationError` (a worker refuses to start
    before it gets here).
    """
    if handler.atomic and not chain.transactional:
        raise ConfigurationError(
            f"Handler {handler.task_name} is atomic=True but the bus has no transaction"
            " runner (a transactional middleware); add 'celery_events.contrib.django' to"
            " INSTALLED_APPS."
        )
    if call is None or chain.handle_scope is None:
        handler.call(event)
        return True
    outcome = chain.run_handle(call, lambda c: handler.call(c.event))
    if outcome is SKIPPED:
        log.info(
            "celery-events: %s already handled event %s (database inbox); skipped",
            handler.task_name,
            call.event.id,
        )
        return False
    return True


def failure_outcome(
    policy: RetryPolicy, exc: BaseException, failures: int
) -> tuple[str | None, float]:
    """What a worker does after the ``failures``-th failed run of a delivery raised ``exc``:
    ``(None, countdown)`` to retry in ``countdown`` seconds, or ``(reason, 0.0)`` to give up
    into the dead letters with that :class:`~celery_events.deadletters.Reason`."""
    if isinstance(exc, Reject):
        return Reason.REJECTED, 0.0
    if isinstance(exc, DeliveryRefused):
        # Refused for what it carries (data its model parameter cannot parse): a retry would
        # carry the same.
        return exc.reason, 0.0
    if policy.should_retry(exc, failures):
        asked = exc.delay if isinstance(exc, Retry) else None
        return None, policy.delay(failures, asked)
    if isinstance(exc, Retry) or (
        isinstance(exc, policy.retry_for) and not isinstance(exc, policy.dont_retry_for)
    ):
        return Reason.RETRIES_EXHAUSTED, 0.0
    return Reason.NOT_RETRIED, 0.0


def _task_of(lease: str) -> str | None:
    """The task id a lease (:func:`lease_value`) names, or None."""
    try:
        task = json.loads(lease).get("task")
    except (ValueError, AttributeError):
        return None
    return task if isinstance(task, str) else None


class _Run:
    """One run of one delivery."""

    def __init__(self, bus: DeliveryHost, handler: Handler, task: Task) -> None:
        self.bus = bus
        self.handler = handler
        self.task = task
        request = task.request
        self.task_id: str = request.id
        self.hostname: str | None = request.hostname
        delivery_info = request.delivery_info or {}
        self.queue: str = bus._delivery_queue(handler, delivery_info.get("routing_key"))
        self.started = time.monotonic()
        #: This run's inbox lease, once it may be in the store.
        self.lease: str | None = None
        #: Whether the delivery's argument text is masked (sensitive fields), so that its
        #: retries keep it.
        self.masked = bool(handler.sensitive)
        # How the run ended, for the chain's on_settled listeners (set where it is decided).
        self.started_at = time.time()
        self.event: Event | None = None
        self.attempt = int(request.retries or 0) + 1
        self.outcome: str | None = None
        self.reason: str | None = None
        self.error: BaseException | None = None
        self.countdown: float | None = None
        self.handler_started_at: float | None = None
        self.handler_finished_at: float | None = None
        self.redelivered = False
        #: Whether the inbox's success record also acknowledged the broker's message.
        self.acked = False

    def _ended(
        self,
        outcome: str,
        *,
        error: BaseException | None = None,
        reason: str | None = None,
        countdown: float | None = None,
    ) -> None:
        """Note how this run ends (the last note counts: a retry whose release is handed
        back ends handed back)."""
        self.outcome, self.error, self.reason, self.countdown = outcome, error, reason, countdown

    def _settle(self, chain: MiddlewareChain, raised: BaseException | None) -> None:
        outcome = self.outcome
        if outcome is None:
            outcome = Outcome.SUCCEEDED if raised is None else Outcome.FAILED
        chain.notify(
            chain.on_settled,
            Settled(
                outcome=outcome,
                handler=self.handler.task_name,
                queue=self.queue,
                task_id=self.task_id,
                service=self.bus.service,
                event=self.event,
                attempt=self.attempt,
                started_at=self.started_at,
                finished_at=time.time(),
                handler_started_at=self.handler_started_at,
                handler_finished_at=self.handler_finished_at,
                error=self.error if self.error is not None else (
                    raised if outcome == Outcome.FAILED else None
                ),
                reason=self.reason,
                countdown=self.countdown,
                hostname=self.hostname,
                redelivered=self.redelivered,
            ),
        )

    def _time_left(self) -> float:
        """Seconds this run may still wait before its time limit ends it."""
        elapsed = time.monotonic() - self.started
        return max(0.0, self.handler.time_limit - elapsed - TIME_LIMIT_MARGIN)

    def _store(
        self,
        what: str,
        call: Callable[[], T],
        *,
        patience: float | None = None,
        errors: tuple[type[BaseException], ...] = (StoreError,),
        countdown: float = 0.0,
    ) -> T:
        """``call()`` on the state store, waiting out an outage for ``patience`` seconds (the
        ``state_outage_wait`` setting, within the time limit); then the delivery is handed
        back to the broker (raises Celery's Retry, or Reject to requeue), to run again after
        at least ``countdown`` seconds."""
        if patience is None:
            patience = min(self.bus.settings.state_outage_wait, self._time_left())
        try:
            return ride_out(call, what, patience, errors)
        except errors as exc:
            self._hand_back(what, exc, countdown)
            raise  # not reached: the hand-back raises

    def _hand_back(self, what: str, exc: BaseException, countdown: float = 0.0) -> None:
        wait = max(countdown, hand_back_countdown(int(self.task.request.retries or 0)))
        outages.handed_back(self.task_id, what, exc, wait)
        self._ended(Outcome.HANDED_BACK, error=exc, countdown=wait)
        if self.lease is not None:
            abandoned.add(self.lease)
        # A retry of the same task id: the broker keeps it, and nothing in the store counted
        # it as a failure or a start, so neither max_retries nor max_deliveries moves.
        self._celery_retry(countdown=wait, exc=None)

    def run(self, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        """Run the delivery the task was called with (one envelope); the chain's
        ``on_settled`` listeners hear how it ended."""
        chain = self.bus.middleware
        if not chain.on_settled:
            self._start(args, kwargs)
            return
        try:
            self._start(args, kwargs)
        except BaseException as exc:
            self._settle(chain, exc)
            raise
        self._settle(chain, None)

    def _start(self, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        if kwargs or len(args) != 1:
            self.refuse_arguments(args, kwargs)
        self._run(args[0])

    def _run(self, envelope: object) -> None:
        handler = self.handler
        inbox = self.bus.inbox
        try:
            event = Event.from_envelope(envelope)
        except InvalidEnvelope as exc:
            self._dead(Reason.INVALID_ENVELOPE, exc, envelope, attempts=1, event_id="-")
            raise
        self.event = event
        chain = self.bus.middleware
        # Fields the publisher declared sensitive: checked (decrypted), and kept masked.
        sensitive = isinstance(envelope, dict) and SENSITIVE in envelope
        if sensitive:
            self.masked = True
        if chain.receive_hooks or sensitive:
            handed = self._received(chain, envelope, event)
            if handed is None:
                self._ended(Outcome.IGNORED)
                return
            event = self.event = handed

        # The lease names this process, whose alive key it renews: a copy of this delivery
        # elsewhere waits while this process lives, and takes over once it died.
        lease = self.lease = lease_value(
            self.task_id, self._store("process token", inbox.process_token)
        )
        # The inbox knows a delivery by its event's id and time (the Redis one groups its
        # records by the time); every run of one event reads the same from the envelope.
        event_time = event.time.timestamp()

        def take() -> Claim:
            # Safe to send again with the same lease: a claim whose reply was lost is found as
            # this run's own, its start counted once. The handler has not run: handing the
            # delivery back costs nothing but time.
            return self._store(
                "claim",
                lambda: inbox.claim(
                    handler.task_name,
                    event.id,
                    self.task_id,
                    event_time=event_time,
                    lease=lease,
                    lease_seconds=handler.lease_seconds,
                    use_inbox=handler.inbox,
                ),
            )

        claim = take()
        if claim.status == "busy" and claim.holder in abandoned:
            # The lease of a run of this process that was handed back during an outage: no
            # run holds it, so it is released rather than waited out.
            holder = claim.holder
            holder_task = _task_of(holder) or self.task_id
            self._store(
                "release",
                lambda: inbox.release(
                    handler.task_name, event.id, holder_task, lease=holder, failed=False
                ),
            )
            abandoned.discard(holder)
            claim = take()
        if claim.status == "done":
            log.info(
                "celery-events: %s already handled event %s; delivery %s skipped",
                handler.task_name,
                event.id,
                self.task_id,
            )
            self._ended(Outcome.DUPLICATE_SKIPPED)
            if chain.on_duplicate_skipped:
                chain.notify(chain.on_duplicate_skipped, self._handler_call(event, 1))
            return
        if claim.status == "busy":
            # Come back just after the holder's alive key would expire if it died meanwhile.
            wait = max(1.0, min(claim.holder_ttl_ms / 1000.0 + 0.5, 30.0))
            self._ended(Outcome.WAITING, countdown=wait)
            log.info(
                "celery-events: another copy of delivery %s of event %s is running; checking"
                " again in %.1f s",
                self.task_id,
                event.id,
                wait,
            )
            self._celery_retry(countdown=wait, exc=None)
        if claim.starts > self.bus.settings.max_deliveries:
            error = PoisonMessageError(
                f"Delivery {self.task_id} was started {claim.starts - 1} times without finishing"
                " (its worker died each time); it is dead-lettered as a poison message."
            )
            self._dead(
                Reason.TOO_MANY_DELIVERIES,
                error,
                envelope,
                attempts=claim.starts - 1,
                event_id=event.id,
                first_failed_at=claim.first_failed_at,
                trace=None,
            )
            # Forgotten only once the dead letter is kept: a store failing in between leaves
            # the delivery's counts, and its retry comes back here.
            self._store(
                "release",
                lambda: inbox.release(
                    handler.task_name, event.id, self.task_id, lease=lease, failed=True,
                    forget=True,
                ),
            )
            raise error

        # Described only for a chain that looks at deliveries: none costs nothing here.
        call = None
        self.attempt = claim.failures + max(claim.starts, 1)
        self.redelivered = claim.starts > 1
        if chain.sees_deliveries:
            call = self._handler_call(event, self.attempt)
            if claim.starts > 1 and chain.on_redelivered:
                chain.notify(chain.on_redelivered, call)
        effects = inbox.new_effects()
        event_token = current_event.set(event)
        effects_token = current_effects.set(effects)
        if chain.on_settled:
            self.handler_started_at = time.time()
        try:
            ran = call_handler(chain, handler, event, call)
        except StoreError as exc:
            if chain.on_settled:
                self.handler_finished_at = time.time()
            # A store the handle chain writes in (the Django database inbox of an atomic
            # handler) is away: nothing was committed, and it is no failure of the handler.
            current_effects.reset(effects_token)
            current_event.reset(event_token)
            if effects is not None:
                effects.reset()
            self._store(
                "release",
                lambda: inbox.release(
                    handler.task_name, event.id, self.task_id, lease=lease, failed=False,
                    next_due_in=handler.lease_seconds,
                ),
            )
            self._hand_back("handler's transaction", exc)
            raise  # not reached: the hand-back raises
        except Exception as exc:
            if chain.on_settled:
                self.handler_finished_at = time.time()
            current_effects.reset(effects_token)
            current_event.reset(event_token)
            if effects is not None:
                effects.reset()
            self._failed(
                exc, event, call, envelope, lease, claim.failures + 1, claim.first_failed_at
            )
            raise
        if chain.on_settled:
            self.handler_finished_at = time.time()
        current_effects.reset(effects_token)
        current_event.reset(event_token)
        if not ran:
            self._ended(Outcome.DUPLICATE_SKIPPED)
        if not ran and call is not None and chain.on_duplicate_skipped:
            chain.notify(chain.on_duplicate_skipped, call)
        # The message's tag, for an inbox that acknowledges it with the success record (a
        # worker's message: a delivery run in place has none).
        properties = getattr(self.task.request, "properties", None) or {}
        delivery_tag = properties.get("delivery_tag") if inbox.acknowledges else None
        try:
            # The handler ran: wait for the store as long as the time limit allows, since a
            # delivery handed back now may run the handler a second time.
            succeeded = ride_out(
                lambda: inbox.succeed(
                    handler.task_name,
                    event.id,
                    self.task_id,
                    event_time=event_time,
                    lease=lease,
                    use_inbox=handler.inbox,
                    ttl_seconds=self.bus.settings.inbox_ttl,
                    effects=effects,
                    delivery_tag=delivery_tag,
                ),
                "success",
                self._time_left(),
            )
        except StoreError as exc:
            log.error(
                "celery-events: %s handled event %s but the state store stayed away until its"
                " time limit, so its success is not recorded; delivery %s goes back to the"
                " broker and its next run skips it if the record was written after all, else"
                " runs the handler again (at least once, as after a crash)",
                handler.task_name,
                event.id,
                self.task_id,
            )
            self._hand_back("success", exc)
            raise  # not reached
        self.acked = succeeded and isinstance(delivery_tag, str)
        if not succeeded:
            log.warning(
                "celery-events: delivery %s of event %s by %s was recorded as handled by"
                " another run (a copy took its lease over while this process's alive key was"
                " expired, or this run's own record was written before its reply was lost);"
                " that record counts, and this run's Redis effects were dropped",
                self.task_id,
                event.id,
                handler.task_name,
            )

    def _received(self, chain: MiddlewareChain, envelope: Any, event: Event) -> Event | None:
        """The event the receive hooks hand on; a refused delivery is dead-lettered (before
        the inbox is asked: nothing is claimed, and the handler never runs), then raises.
        ``None``: a copy not meant for this handler, acked unrun."""
        receipt = Receipt(
            envelope, event, self.handler.task_name, self.queue, self.task_id, self.bus.service
        )
        error: Exception
        try:
            handed = chain.run_receive(receipt).event
            if handed is event and SENSITIVE in envelope:
                # No hook decrypted anything: a field still encrypted is refused, never
                # handed to the handler as its ciphertext.
                refuse_encrypted(event, envelope)
            return handed
        except RegistryError as exc:
            # A hook that reads the registry (the declared schema) found it away: no fault of
            # the delivery, which waits and comes back rather than being dead-lettered.
            self._hand_back("registry", exc)
            raise  # not reached: the hand-back raises
        except DeliveryRefused as exc:
            if isinstance(exc, VersionNotAccepted) and self._routed_by_name(event):
                log.info(
                    "celery-events: delivery %s of event %s acked unrun: %s The broker copies"
                    " an event to every queue bound to its name; its publisher sent it to the"
                    " handlers accepting its version only",
                    self.task_id, event.id, exc,
                )
                return None
            reason, error = exc.reason, exc
            trace: str | bool | None = None
            log.warning(
                "celery-events: delivery %s of event %s to %s refused (%s): %s",
                self.task_id, event.id, self.handler.task_name, reason, exc,
            )
        except Exception as exc:
            reason, error, trace = Reason.REJECTED, exc, traceback.format_exc()
            log.exception(
                "celery-events: a receive hook raised on delivery %s of event %s to %s; it is"
                " dead-lettered",
                self.task_id, event.id, self.handler.task_name,
            )
        self._dead(reason, error, envelope, attempts=1, event_id=event.id, trace=trace)
        raise error

    def _routed_by_name(self, event: Event) -> bool:
        """Whether this delivery is the broker's copy of a publish, routed by the event's name
        alone (a transport whose broker copies the one message of a publish), rather than a
        delivery sent to this handler (a retry, a replay, every delivery on Redis)."""
        info = self.task.request.delivery_info or {}
        return bool(self.bus.transport.assigns_task_ids) and info.get("routing_key") == event.name

    def refuse_arguments(self, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        """Dead-letter a delivery called with anything but one envelope, and raise."""
        error = InvalidEnvelope(
            f"Delivery {self.task_id} was called with {len(args)} positional and"
            f" {len(kwargs)} keyword argument(s) ({', '.join(map(str, kwargs)) or 'none named'});"
            " a delivery takes exactly one envelope."
        )
        self._dead(
            Reason.INVALID_ENVELOPE,
            error,
            {"invalid": repr((args, kwargs))[:1000]},
            attempts=1,
            event_id="-",
            trace=None,
        )
        raise error

    def _handler_call(self, event: Event, attempt: int) -> HandlerCall:
        handler = self.handler
        return HandlerCall(
            event,
            handler.task_name,
            self.queue,
            self.task_id,
            attempt,
            self.bus.service,
            handler.atomic,
        )

    def _failed(
        self,
        exc: Exception,
        event: Event,
        call: HandlerCall | None,
        envelope: object,
        lease: str,
        failures: int,
        first_failed_at: float | None,
    ) -> None:
        handler = self.handler
        reason, countdown = failure_outcome(handler.retry, exc, failures)
        if reason is None:
            self._ended(Outcome.RETRIED, error=exc, countdown=countdown)
            chain = self.bus.middleware
            if call is not None and chain.on_retry:
                chain.notify(chain.on_retry, call, exc, countdown)
            inbox = self.bus.inbox
            # Not written: the failure is not counted, and the delivery comes back no sooner
            # than its retry would have.
            self._store(
                "release",
                lambda: inbox.release(
                    handler.task_name,
                    event.id,
                    self.task_id,
                    lease=lease,
                    failed=True,
                    next_due_in=countdown + handler.lease_seconds,
                ),
                countdown=countdown,
            )
            if not isinstance(exc, Retry):
                log.warning(
                    "celery-events: %s failed on event %s (attempt %d of %d), retrying in"
                    " %.1f s: %r",
                    handler.task_name,
                    event.id,
                    failures,
                    handler.retry.max_retries + 1,
                    countdown,
                    exc,
                )
            self._celery_retry(countdown=countdown, exc=exc)
            return  # not reached: the retry raises
        self._dead(
            reason,
            exc,
            envelope,
            attempts=failures,
            event_id=event.id,
            first_failed_at=first_failed_at,
        )
        inbox = self.bus.inbox
        self._store(
            "release",
            lambda: inbox.release(
                handler.task_name, event.id, self.task_id, lease=lease, failed=True, forget=True
            ),
        )

    def _celery_retry(self, countdown: float, exc: Exception | None) -> None:
        # Explicitly to the handler's own queue: Celery's retry otherwise copies the
        # delivery's exchange and routing key, which on RabbitMQ are the events exchange and
        # the event name, and the retry would reach every subscriber again.
        countdown, route = self.bus._retry_route(self.handler, countdown)
        try:
            shown = getattr(self.task.request, "argsrepr", None) if self.masked else None
            if isinstance(shown, str):
                # Celery's retry makes its argument text from the arguments (the clear
                # fields); it keeps this delivery's masked one instead.
                route = {**route, "argsrepr": shown}
            self.task.retry(countdown=countdown, exc=exc, max_retries=None, **route)
        except CeleryRetry:
            raise
        except CeleryReject as rejected:
            # Celery drops the message when the retry cannot be published; put it back on
            # the queue instead, so that the delivery is not lost.
            log.warning(
                "celery-events: could not publish the retry of %s, requeueing it: %s",
                self.task_id,
                rejected.reason,
            )
            raise CeleryReject(rejected.reason, requeue=True) from None

    def _dead(
        self,
        reason: str,
        exc: BaseException,
        envelope: object,
        *,
        attempts: int,
        event_id: str,
        first_failed_at: float | None = None,
        trace: str | None | bool = True,
    ) -> None:
        letter = new_letter(
            service=self.bus.service,
            reason=reason,
            error=exc,
            traceback=(
                trace if isinstance(trace, str)
                else traceback.format_exc() if trace is True else None
            ),
            handler=self.handler.task_name,
            envelope=envelope if isinstance(envelope, dict) else {"invalid": repr(envelope)},
            attempts=attempts,
            first_failed_at=first_failed_at,
            hostname=self.hostname,
            task_id=self.task_id,
            queue=self.queue,
            # Named after the delivery, so that recording it twice (a crash before the ack)
            # keeps one record.
            id=self.task_id,
        )
        self._ended(Outcome.DEAD_LETTERED, error=exc, reason=reason)
        # Kept before anything of the delivery is forgotten: a write that fails hands the
        # delivery back with its counts, and its next run comes back here.
        dead_letters = self.bus.dead_letters
        self._store("dead letter", lambda: dead_letters.add(letter), errors=DEAD_LETTER_ERRORS)
        if event_id == "-":
            inbox = self.bus.inbox
            self._store("forget", lambda: inbox.forget(self.task_id))
        chain = self.bus.middleware
        if chain.on_dead_letter:
            chain.notify(chain.on_dead_letter, letter)
