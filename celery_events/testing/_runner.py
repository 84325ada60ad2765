"""Running a bus's deliveries in the test process, through the real delivery task."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..declarations import version_in
from ..envelope import Event, encode_data
from ..errors import ConfigurationError, InvalidEnvelope
from ..names import pattern_matches
from ._worker import Execution, InProcessWorker

if TYPE_CHECKING:
    from ..bus import EventBus

__all__ = ["HandlerRun", "HandlerRunner"]

SUCCEEDED = "succeeded"
SKIPPED = "skipped"
RETRYING = "retrying"
DEAD_LETTERED = "dead_lettered"
#: The task failed and its bus kept no dead letter for it: a bug the test should see.
FAILED = "failed"


@dataclass(frozen=True)
class HandlerRun:
    """What happened to one delivery: one handler's copy of one event."""

    #: The handler's Celery task name, ``{service}.{name}``.
    handler: str
    #: ``succeeded``; ``skipped`` (the inbox says it was handled); ``dead_lettered``;
    #: ``retrying`` (a retry is due and the runner was told not to run retries); or
    #: ``failed`` (the task failed and the bus kept no dead letter: a bug to report).
    status: str
    #: How many times the handler function ran.
    attempts: int
    #: The seconds the worker would have waited before each retry.
    retry_delays: tuple[float, ...] = ()
    #: Why the delivery became a dead letter (a :class:`~celery_events.deadletters.Reason`).
    reason: str | None = None
    #: The exception of the last failed run.
    error: BaseException | None = None
    #: The delivery's Celery task id (kept by its retries); its dead letter has this id.
    task_id: str = ""
    #: The id of the delivered event ("" for an envelope without one).
    event_id: str = ""

    @property
    def ok(self) -> bool:
        return self.status in (SUCCEEDED, SKIPPED)


@dataclass
class _Delivery:
    handler: str
    event_id: str
    status: str = ""
    attempts: int = 0
    delays: list[float] = field(default_factory=list)
    reason: str | None = None
    error: BaseException | None = None

    def result(self, task_id: str) -> HandlerRun:
        return HandlerRun(
            self.handler, self.status, self.attempts, tuple(self.delays), self.reason,
            self.error, task_id, self.event_id,
        )


class HandlerRunner:
    """Runs deliveries of events to a bus's handlers in this process, as its worker would.

    Meant for the memory backend (``Celery(broker="memory://")``), where the queues are in this
    process; on another broker it takes the deliveries off that broker's queues. Each delivery
    is a real task message, run through Celery's task tracer and the bus's delivery task: the
    envelope is read from JSON, the inbox skips a delivery whose event the handler already
    handled (``inbox=False`` handlers run again), an ``atomic=True`` handler goes through the
    Django database inbox, a failure is retried or dead-lettered by the handler's own policy,
    and a dead letter lands in ``bus.dead_letters`` (named after the delivery's ``task_id``).
    Retries are the messages Celery's retry publishes; the runner runs them at once and
    records the wait the worker would have made (``run.retry_delays``).
    ``run_retries=False`` leaves every retry on its queue and reports the delivery as
    ``retrying``; a later :meth:`work` runs it.

    >>> from celery import Celery
    >>> from celery_events import Event, EventBus
    >>> from celery_events.testing import HandlerRunner
    >>> shop_bus = EventBus(Celery("shop", broker="memory://"), service="shop")
    >>> bus = EventBus(Celery("warehouse", broker="memory://"), service="warehouse")
    >>> @bus.subscribe("order.placed")
    ... def ship(event):
    ...     print("shipping order", event.data["id"])
    >>> bus.register()
    [Subscription(pattern='order.placed', service='warehouse', ...)]
    >>> runner = HandlerRunner()
    >>> [run] = runner.run(bus, Event.create("order.placed", {"id": 1}, source="shop"))
    shipping order 1
    >>> run.status, run.attempts
    ('succeeded', 1)
    >>> shop_bus.publish("order.placed", {"id": 2}).deliveries
    (Delivery(service='warehouse', handler='warehouse.ship', queue='events.warehouse', ...),)
    >>> [run] = runner.work(bus)      # what the worker of bus would do now
    shipping order 2
    """

    def __init__(self, *, run_retries: bool = True) -> None:
        self.run_retries = run_retries
        #: Every delivery this runner ran, by task id, in the order they were first seen.
        self.deliveries: dict[str, HandlerRun] = {}
        self._state: dict[str, _Delivery] = {}

    def run(
        self,
        bus: EventBus,
        event: Event | dict[str, Any],
        *,
        handlers: Iterable[str] | None = None,
    ) -> list[HandlerRun]:
        """Deliver ``event`` (an :class:`Event` or an envelope) to each of ``bus``'s handlers
        whose pattern matches it (and, for an event naming a version in its ``dataschema``,
        that accept the version, as a publisher sends it), and run those deliveries to their
        end. Data breaking a handler's schema, or the registry's declaration of it, shows as
        a run ``dead_lettered`` with reason ``schema_mismatch``.

        ``handlers`` limits the run to those task names. Returns one :class:`HandlerRun` per
        handler, in subscription order. An envelope that is not a valid event goes to the
        handlers as another producer would send it, and each dead-letters it, as on a worker;
        an :class:`Event` whose data ``publish`` would refuse raises
        :class:`~celery_events.InvalidEventData`. Other deliveries waiting on the bus's queues
        stay there (:meth:`work` runs them).
        """
        if isinstance(event, Event):
            # The checks publish makes, so that a test cannot deliver what could never be sent.
            encode_data(
                event.name, event.data, bus.settings.max_event_size, bus.settings.max_event_depth
            )
            envelope = event.to_envelope()
        else:
            envelope = json.loads(json.dumps(event))
        name = envelope.get("type") if isinstance(envelope, dict) else None
        wanted = None if handlers is None else set(handlers)
        # A publisher sends an event of a version only to the handlers accepting it.
        dataschema = envelope.get("dataschema") if isinstance(name, str) else None
        version = (
            version_in(name, dataschema)
            if isinstance(name, str) and isinstance(dataschema, str)
            else None
        )
        chosen = [
            s for s in bus.subscriptions()
            if isinstance(name, str)
            and _matches(s.pattern, name)
            and s.accepts_version(version)
            and (wanted is None or s.handler in wanted)
        ]
        # A worker refuses to start with atomic handlers and no transaction runner; the
        # runner refuses to run them.
        atomic = {h.task_name for h in bus.handlers if h.atomic} & {s.handler for s in chosen}
        if atomic and not bus.middleware.transactional:
            raise ConfigurationError(
                f"Handlers {', '.join(sorted(atomic))} are atomic=True but the bus has no"
                " transaction runner (a transactional middleware); add"
                " 'celery_events.contrib.django' to INSTALLED_APPS."
            )
        valid = True
        try:
            Event.from_envelope(envelope)
        except InvalidEnvelope:
            valid = False
        task_ids = [_send(bus, envelope, s.handler, s.queue, valid) for s in chosen]
        for task_id, subscription in zip(task_ids, chosen, strict=True):
            self._state[task_id] = _Delivery(subscription.handler, str(envelope.get("id", "")))
        mine = set(task_ids)
        self._work(bus, lambda task_id: task_id in mine)
        return [self._state[task_id].result(task_id) for task_id in task_ids]

    def work(self, *buses: EventBus) -> list[HandlerRun]:
        """Run every delivery waiting on the queues of ``buses`` (what their workers would
        do now: deliveries published to them, replays of dead letters), retries included.

        Returns one :class:`HandlerRun` per delivery that ran, in the order they first ran.
        """
        ran: dict[str, None] = {}
        for bus in buses:
            ran.update(dict.fromkeys(self._work(bus, lambda task_id: True)))
        return [self._state[task_id].result(task_id) for task_id in ran]

    def _work(self, bus: EventBus, chosen: Callable[[str], bool]) -> list[str]:
        """Run the chosen deliveries on ``bus``'s queues; the task ids that ran, in order."""
        ran: dict[str, None] = {}

        def wanted(task_id: str, is_retry: bool) -> bool:
            return chosen(task_id) and (self.run_retries or not is_retry)

        def record(execution: Execution) -> None:
            ran[execution.task_id] = None
            self._record(bus, execution)

        InProcessWorker(bus).work(wanted=wanted, on_execution=record)
        for task_id in ran:
            self.deliveries[task_id] = self._state[task_id].result(task_id)
        return list(ran)

    def _record(self, bus: EventBus, execution: Execution) -> None:
        state = self._state.get(execution.task_id)
        if state is None:
            state = self._state[execution.task_id] = _Delivery(
                execution.handler, execution.event_id
            )
        if execution.outcome == "succeeded":
            state.status = SKIPPED if execution.skipped else SUCCEEDED
            state.attempts += 0 if execution.skipped else 1
            return
        if execution.outcome == "retry":
            if execution.error is not None:  # None: another copy held the lease
                state.attempts += 1
                state.error = execution.error
            state.delays.append(execution.countdown or 0.0)
            state.status = RETRYING
            return
        state.error = execution.error
        letter = _dead_letter(bus, execution.task_id)
        if letter is None:
            state.status = FAILED
            state.attempts += 1
            return
        state.status = DEAD_LETTERED
        state.reason = letter.reason
        # Refused before it ran (unreadable, poison, a bad signature, a source not allowed,
        # data or a version its handler does not accept).
        if letter.reason not in (
            "invalid_envelope", "too_many_deliveries", "invalid_signature", "not_allowed",
            "schema_mismatch",
        ):
            state.attempts += 1


def _send(bus: EventBus, envelope: dict[str, Any], handler: str, queue: str, valid: bool) -> str:
    if valid:
        # The bus's own send path (the one a dead letter's replay takes): one delivery of the
        # envelope to one of its handlers. Past the publish scopes: the delivery is an event
        # as it arrives, published by whoever, and a subscriber's publish middleware (stamping,
        # permissions, publish-on-commit) never sees those on a worker.
        return bus._resend(envelope, handler, queue, publish_scope=False)
    # What publish would refuse, sent as any other producer could: the worker must cope.
    result = bus.app.send_task(handler, args=[envelope], queue=queue)
    return str(result.id)


def _dead_letter(bus: EventBus, task_id: str) -> Any:
    # A delivery's dead letter is named after its task id.
    from ..deadletters import DeadLetterNotFound

    try:
        return bus.dead_letters.get(task_id)
    except DeadLetterNotFound:
        return None


def _matches(pattern: str, name: str) -> bool:
    try:
        return pattern_matches(pattern, name)
    except ValueError:
        return False
