"""The middleware base class and what its scopes see.

A bus has one chain of middleware, given once: ``EventBus(app, service=..., middleware=[...])``.
Each middleware may wrap two scopes and listen to notifications; every method has a default
that does nothing, so a middleware overrides only what it needs and the chain calls only
what was overridden.

- :meth:`Middleware.publish` wraps one event's publish, after its name and data were
  validated and before its deliveries are sent. It returns what ``call_next`` returns (the
  event went on), or raises (it is refused: nothing is sent), or returns a deferred
  :class:`~celery_events.PublishResult` without calling ``call_next`` now (it is sent later,
  as Django's publish-on-commit and outbox do). It may pass on a changed call, such as one
  whose event carries more extension attributes.
- :meth:`Middleware.receive` looks at one delivery as it comes off the queue, before the
  inbox is asked and before anything else runs: it checks what arrived (a signature, a
  permission) and may hand on another event (decrypted data). It raises
  :class:`~celery_events.DeliveryRefused` to dead-letter the delivery at once with a reason;
  the handler never runs and nothing is claimed. Receive hooks run innermost first, the
  mirror of publishing: what the innermost publish scope did last (signing) is undone
  first (verified).
- :meth:`Middleware.handle` wraps one delivery's handler call in the worker (after the inbox
  let it run, before its outcome is recorded): an app context, a database transaction, a
  signature check, a span. It returns what ``call_next`` returns, or :data:`SKIPPED` when the
  handler must not run because the delivery was already handled. A scope that raises fails
  the delivery as its handler would: :class:`~celery_events.Reject` dead-letters it at once,
  other exceptions are retried by the handler's policy.
- ``on_*`` methods are notifications: the worker tells them what happened and goes on.
  :meth:`Middleware.on_settled` is told how every run of every delivery ended, whatever
  path it took (handled, retried, dead-lettered, skipped as a duplicate, refused before the
  handler, handed back during an outage): the one place tracing, metrics and the trace
  records need.

The first middleware of the list is the outermost: its ``publish`` runs first and calls the
second's. Features built in (Django's transactions, Flask's app context) are added after the
user's, so the user's middleware sees an event before it is deferred or written to an outbox.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

from .._frozen import copied
from ..envelope import Event, ExtensionValue
from ..results import PublishResult

if TYPE_CHECKING:
    from ..deadletters import DeadLetter
    from ..registry import Subscription

__all__ = [
    "Middleware",
    "PublishCall",
    "HandlerCall",
    "Receipt",
    "Settled",
    "Outcome",
    "PublishNext",
    "HandleNext",
    "SKIPPED",
    "PUBLISH",
    "REPLAY",
]

#: :attr:`PublishCall.origin` of ``bus.publish`` and ``bus.publish_event``.
PUBLISH = "publish"
#: :attr:`PublishCall.origin` of a dead letter's replay: one delivery to one handler, sent now.
REPLAY = "replay"


class _Skipped(enum.Enum):
    SKIPPED = "skipped"

    def __repr__(self) -> str:
        return "SKIPPED"


#: What a handle scope returns when it did not run the handler because the delivery was
#: already handled (Django's database inbox): the worker records a skipped duplicate.
SKIPPED = _Skipped.SKIPPED


@dataclass(frozen=True)
class PublishCall:
    """One event on its way out, as a publish scope sees it."""

    #: The event, validated: its name, data and ids can be sent.
    event: Event
    #: Whether a publish with no matching subscription raises :class:`NoSubscribersError`.
    require_subscribers: bool
    #: :data:`PUBLISH` (``bus.publish``, ``bus.publish_event``, an outbox relay) or
    #: :data:`REPLAY` (a dead letter sent again to its handler).
    origin: str = PUBLISH
    #: The event's data as JSON, as it goes on the wire (set by the publish path).
    data_json: str = ""
    #: For a replay: the one delivery it sends; otherwise ``None`` (the registry decides).
    targets: tuple[Subscription, ...] | None = None
    # Set by the publish path: checks require_subscribers against the registry, and encodes
    # (so validates) changed data.
    _check: Callable[[PublishCall], None] | None = field(default=None, repr=False, compare=False)
    _encode: Callable[[Event], str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def _made(
        cls,
        event: Event,
        require_subscribers: bool,
        origin: str,
        data_json: str,
        targets: tuple[Subscription, ...] | None,
        check: Callable[[PublishCall], None] | None,
        encode: Callable[[Event], str] | None,
    ) -> PublishCall:
        """``PublishCall(...)`` as the publish path makes one for every event, without the
        frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field: most of what
        having publish middleware at all costs a publish)."""
        call = object.__new__(cls)
        call.__dict__.update(
            event=event,
            require_subscribers=require_subscribers,
            origin=origin,
            data_json=data_json,
            targets=targets,
            _check=check,
            _encode=encode,
        )
        return call

    def with_event(self, event: Event) -> PublishCall:
        """This call with ``event`` instead, such as one with more extension attributes.

        The new event is validated as ``publish_event`` validates one (its data again only if
        it changed): a middleware cannot make the bus send what a subscriber would refuse.

        >>> from celery import Celery
        >>> from celery_events import EventBus, Middleware
        >>> class Tenant(Middleware):
        ...     def publish(self, call, call_next):
        ...         return call_next(call.with_event(call.event.with_extensions(tenant="acme")))
        >>> bus = EventBus(Celery("shop", broker="memory://"), service="shop", middleware=[Tenant()])
        >>> bus.publish("order.placed", {"order_id": 7}).event.extensions
        {'tenant': 'acme'}
        """
        if event is self.event:
            return self
        if not isinstance(event, Event):
            raise TypeError(f"PublishCall.with_event takes an Event, not {type(event).__name__}.")
        event.validate()
        data_json = self.data_json
        if event.data is not self.event.data and self._encode is not None:
            data_json = self._encode(event)
        return replace(self, event=event, data_json=data_json)

    def with_extensions(self, attributes: Mapping[str, ExtensionValue | None]) -> PublishCall:
        """This call with these extension attributes added to (or, given as None, taken out
        of) its event: ``with_event(event.with_extensions(...))``, checked once.

        >>> class Priority(Middleware):
        ...     def publish(self, call, call_next):
        ...         return call_next(call.with_extensions({"priority": 2, "tenant": None}))
        >>> bus = EventBus(Celery("shop", broker="memory://"), service="shop",
        ...                middleware=[Tenant(), Priority()])   # outermost first
        >>> bus.publish("order.placed", {"order_id": 7}).event.extensions
        {'priority': 2}
        """
        # Only the attributes changed, and Event.with_extensions checked them: the rest of
        # the event was validated when the call was made.
        return copied(self, PublishCall, event=self.event.with_extensions(attributes))

    def check_subscribers(self) -> None:
        """Raise :class:`~celery_events.NoSubscribersError` now if ``require_subscribers`` is
        set and nothing subscribes to the event (reads the registry).

        A middleware that defers a publish calls this first, so that the caller learns of a
        missing subscriber before the event is put aside; one that calls ``call_next`` now
        need not (the send checks).
        """
        if self.require_subscribers and self._check is not None:
            self._check(self)


@dataclass(frozen=True)
class HandlerCall:
    """One delivery about to reach its handler, as a handle scope sees it."""

    #: The delivered event, as the handler receives it.
    event: Event
    #: The handler's Celery task name, ``{service}.{name}``.
    handler: str
    #: The queue the delivery came from.
    queue: str
    #: The Celery task id of the delivery (one per subscriber and event; kept by retries).
    task_id: str
    #: 1 for the first run of the delivery, 2 for its first retry, and so on.
    attempt: int
    #: The subscribing service.
    service: str
    #: Whether the handler was subscribed with ``atomic=True``.
    atomic: bool = False


@dataclass(frozen=True)
class Receipt:
    """One delivery as it comes off the queue, as a receive hook sees it."""

    #: The envelope exactly as it was received (a JSON object); never changed by a hook, and
    #: what a dead letter keeps.
    envelope: dict[str, Any]
    #: The event the handler is to get: read from :attr:`envelope`, or as an earlier hook
    #: changed it (decrypted data).
    event: Event
    #: The handler's Celery task name, ``{service}.{name}``.
    handler: str
    #: The queue the delivery came from.
    queue: str
    #: The Celery task id of the delivery.
    task_id: str
    #: The subscribing service.
    service: str

    def with_event(self, event: Event) -> Receipt:
        """This receipt with ``event`` for the handler instead (the envelope stays)."""
        if not isinstance(event, Event):
            raise TypeError(f"Receipt.with_event takes an Event, not {type(event).__name__}.")
        return replace(self, event=event)


class Outcome:
    """How one run of one delivery ended (:attr:`Settled.outcome`)."""

    #: The handler ran and its success is recorded.
    SUCCEEDED = "succeeded"
    #: The handler failed (or asked for a retry) and the delivery runs again after
    #: :attr:`Settled.countdown` seconds.
    RETRIED = "retried"
    #: The delivery became a dead letter (:attr:`Settled.reason` says why): its handler gave
    #: up, a receive hook refused it, its envelope was unreadable, it was a poison message.
    DEAD_LETTERED = "dead_lettered"
    #: The event was already handled by this handler; acked unrun.
    DUPLICATE_SKIPPED = "duplicate_skipped"
    #: Another copy of the delivery holds its lease; this one comes back after
    #: :attr:`Settled.countdown` seconds (no failure counted).
    WAITING = "waiting"
    #: The state store was away; the delivery went back to the broker unrun (or its success
    #: could not be recorded) and runs again (no failure counted).
    HANDED_BACK = "handed_back"
    #: A copy the broker routed to this handler's queue by name that is not meant for it (a
    #: version it does not accept); acked unrun.
    IGNORED = "ignored"
    #: The run raised what the bus does not expect (a bug): Celery records a failure.
    FAILED = "failed"


@dataclass(frozen=True)
class Settled:
    """How one run of one delivery ended, as :meth:`Middleware.on_settled` hears it."""

    #: One of the :class:`Outcome` values.
    outcome: str
    #: The handler's Celery task name, ``{service}.{name}``.
    handler: str
    #: The queue the delivery came from.
    queue: str
    #: The Celery task id of the delivery (kept by its retries).
    task_id: str
    #: The subscribing service.
    service: str
    #: The delivered event, or ``None`` when its envelope could not be read.
    event: Event | None
    #: 1 for the first run of the delivery, 2 for its first retry, and so on.
    attempt: int
    #: When the worker began this run (Unix time).
    started_at: float
    #: When it ended (Unix time).
    finished_at: float
    #: When the handler was called, or ``None`` when it was not (a duplicate, a refusal).
    handler_started_at: float | None = None
    #: When the handler returned or raised, or ``None`` when it was not called.
    handler_finished_at: float | None = None
    #: What the handler (or the check that refused the delivery) raised, or ``None``.
    error: BaseException | None = None
    #: For :data:`Outcome.DEAD_LETTERED`: the dead letter's reason.
    reason: str | None = None
    #: For :data:`Outcome.RETRIED`, ``WAITING`` and ``HANDED_BACK``: seconds until it runs again.
    countdown: float | None = None
    #: The worker that ran it (Celery's ``hostname``), when known.
    hostname: str | None = None
    #: Whether the delivery ran before without finishing (its worker died in it).
    redelivered: bool = False

    @property
    def handler_seconds(self) -> float | None:
        """How long the handler ran, or ``None`` when it was not called."""
        if self.handler_started_at is None or self.handler_finished_at is None:
            return None
        return self.handler_finished_at - self.handler_started_at


PublishNext = Callable[[PublishCall], PublishResult]
HandleNext = Callable[[HandlerCall], Any]


class Middleware:
    """Base class of the bus's middleware; override the scopes and notifications you need.

    >>> from celery import Celery
    >>> from celery_events import EventBus, Middleware
    >>> from celery_events.testing import HandlerRunner
    >>> class Stamp(Middleware):
    ...     def publish(self, call, call_next):
    ...         return call_next(call.with_event(call.event.with_extensions(tenant="acme")))
    ...     def handle(self, call, call_next):
    ...         print(f"handling {call.event.name} (attempt {call.attempt})")
    ...         return call_next(call)
    >>> bus = EventBus(Celery("orders", broker="memory://"), service="orders", middleware=[Stamp()])
    >>> @bus.subscribe("order.placed")
    ... def ship(event):
    ...     print("shipping for", event.extensions["tenant"])
    >>> bus.register()
    [Subscription(pattern='order.placed', ...)]
    >>> bus.publish("order.placed", {"order_id": 7}).event.extensions
    {'tenant': 'acme'}
    >>> [run] = HandlerRunner().work(bus)     # what the worker would do
    handling order.placed (attempt 1)
    shipping for acme
    """

    #: True for a middleware whose handle scope runs ``atomic=True`` handlers in a database
    #: transaction with an inbox row (Django's). A worker whose bus has atomic handlers and no
    #: such middleware refuses to start.
    transactional: ClassVar[bool] = False
    #: True for a middleware whose ``publish`` scope or ``on_published`` notification does
    #: blocking I/O (a database row, a Redis write): ``bus.apublish`` then runs the publish
    #: path around the send in a worker thread, so that the event loop never waits on it.
    #: Without it, that work runs on the loop (it should take microseconds).
    publishes_with_io: ClassVar[bool] = False

    def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
        """Wrap one event's publish: call ``call_next`` (possibly with a changed call), raise
        to refuse, or return a deferred result."""
        return call_next(call)

    def receive(self, receipt: Receipt) -> Receipt:
        """Look at one delivery before the inbox and the handler: return ``receipt`` (or
        ``receipt.with_event(...)``), or raise :class:`~celery_events.DeliveryRefused` to
        dead-letter it unrun. Any other exception dead-letters it too (reason
        ``"rejected"``), logged with its traceback."""
        return receipt

    def handle(self, call: HandlerCall, call_next: HandleNext) -> Any:
        """Wrap one handler call in the worker: return ``call_next(call)``'s result, or
        :data:`SKIPPED` without calling it."""
        return call_next(call)

    def on_retry(self, call: HandlerCall, error: BaseException, countdown: float) -> None:
        """The handler raised ``error`` and the delivery runs again in ``countdown`` seconds."""

    def on_dead_letter(self, letter: DeadLetter) -> None:
        """A delivery gave up and became ``letter`` (its handler, reason and envelope)."""

    def on_duplicate_skipped(self, call: HandlerCall) -> None:
        """The delivery's event was already handled by this handler; it was acked unrun."""

    def on_published(self, result: PublishResult, origin: str) -> None:
        """An event was sent (``result.deliveries``: to whom; none when nobody subscribes),
        in the process that sent it; ``origin`` is :data:`PUBLISH` or :data:`REPLAY`. Called
        for every send, wherever this middleware sits: a publish deferred to a database commit
        is sent later by the scopes inside the deferring middleware only, and is heard here
        then (its publish scope saw ``result.deferred``)."""

    def on_settled(self, settled: Settled) -> None:
        """One run of one delivery ended (every run, whatever its path: see
        :class:`Settled` and :class:`Outcome`). Called once per run, last, in the worker
        process that ran it."""

    def on_redelivered(self, call: HandlerCall) -> None:
        """The delivery runs again after an earlier run died without finishing (a worker
        crash, a lost message sent again)."""

    # ``bus`` is the EventBus; typed Any so that this module does not import the bus, which
    # imports it.
    def on_worker_start(self, bus: Any) -> None:
        """The worker of the EventBus ``bus`` is ready and consumes (its main process)."""

    def on_worker_stop(self, bus: Any) -> None:
        """The worker of the EventBus ``bus`` is shutting down (its main process)."""
