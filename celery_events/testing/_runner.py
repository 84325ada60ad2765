"""Running a bus's handlers in-process, with the decisions its worker would make."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .._delivery import Handler, call_handler, current_effects, current_event, failure_outcome
from ..bus import EventBus
from ..deadletters import Reason
from ..envelope import Event, encode_data
from ..errors import ConfigurationError, InvalidEnvelope
from ..middleware import HandlerCall
from ..names import pattern_matches

__all__ = ["HandlerRun", "HandlerRunner"]

SUCCEEDED = "succeeded"
SKIPPED = "skipped"
RETRYING = "retrying"
DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True)
class HandlerRun:
    """What happened to one handler's delivery of the event."""

    #: The handler's Celery task name, ``{service}.{name}``.
    handler: str
    #: ``succeeded``; ``skipped`` (the inbox says it was handled); ``dead_lettered``; or
    #: ``retrying`` (a retry is due and the runner was told not to run retries).
    status: str
    #: How many times the handler function ran.
    attempts: int
    #: The seconds the worker would have waited before each retry.
    retry_delays: tuple[float, ...] = ()
    #: Why the delivery became a dead letter (a :class:`~celery_events.deadletters.Reason`).
    reason: str | None = None
    #: The exception of the last failed run.
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.status in (SUCCEEDED, SKIPPED)


class HandlerRunner:
    """Runs the handlers of a bus that match an event, in this process, as a worker would.

    The runner keeps its own inbox (like the service's inbox in Redis): a delivery that
    succeeded is skipped when the same event comes again, unless its handler has
    ``inbox=False``. Each handler call goes through the bus's handle scopes (its middleware),
    so with Django ``atomic=True`` handlers use the real database inbox and with Flask they run
    in the app context. ``run_retries=False`` stops at the first failure
    that the worker would retry and reports it as ``retrying``.

    ``effects_client``, a ``redis.Redis``, lets handlers use ``bus.redis_effects()``: their
    commands run on it when the handler succeeds, as on a worker.

    >>> runner = HandlerRunner()
    >>> runs = runner.run(bus, Event.create("order.placed", {"id": 1}, source="shop"))  # doctest: +SKIP
    >>> runs[0].status, runs[0].attempts                               # doctest: +SKIP
    ('succeeded', 1)
    """

    def __init__(self, *, run_retries: bool = True, effects_client: Any = None) -> None:
        self.run_retries = run_retries
        self.effects_client = effects_client
        #: ``(handler task name, event id)`` of every delivery that succeeded.
        self.handled: set[tuple[str, str]] = set()

    def run(
        self,
        bus: EventBus,
        event: Event | dict[str, Any],
        *,
        handlers: Iterable[str] | None = None,
    ) -> list[HandlerRun]:
        """Deliver ``event`` (an :class:`Event` or an envelope) to each matching handler.

        ``handlers`` limits the run to those task names. Returns one :class:`HandlerRun` per
        handler, in subscription order. An envelope that is not valid dead-letters every
        handler of its type, as on a worker; an :class:`Event` whose data ``publish`` would
        refuse raises :class:`~celery_events.InvalidEventData`.
        """
        if isinstance(event, Event):
            # The checks publish makes, so that a test cannot deliver what could never be sent.
            encode_data(
                event.name, event.data, bus.settings.max_event_size, bus.settings.max_event_depth
            )
            envelope = event.to_envelope()
        else:
            envelope = event
        # What goes over the wire is JSON: the handler sees what a worker would decode.
        wire = json.loads(json.dumps(envelope))
        name = wire.get("type") if isinstance(wire, dict) else None
        wanted = None if handlers is None else set(handlers)
        chosen = [
            h
            for h in bus.handlers
            if isinstance(name, str)
            and _matches(h.pattern, name)
            and (wanted is None or h.task_name in wanted)
        ]
        try:
            received = Event.from_envelope(wire)
        except InvalidEnvelope as exc:
            return [
                HandlerRun(h.task_name, DEAD_LETTERED, 0, reason=Reason.INVALID_ENVELOPE, error=exc)
                for h in chosen
            ]
        return [self._deliver(bus, h, received) for h in chosen]

    def _deliver(self, bus: EventBus, handler: Handler, event: Event) -> HandlerRun:
        key = (handler.task_name, event.id)
        if handler.inbox and key in self.handled:
            return HandlerRun(handler.task_name, SKIPPED, 0)
        chain = bus.middleware
        if handler.atomic and not chain.transactional:
            raise ConfigurationError(
                f"Handler {handler.task_name} is atomic=True but the bus has no transaction"
                " runner; add 'celery_events.contrib.django' to INSTALLED_APPS."
            )
        task_id = str(uuid.uuid4())
        attempts = 0
        delays: list[float] = []
        while True:
            attempts += 1
            effects = self.effects_client.pipeline(transaction=True) if self.effects_client else None
            event_token = current_event.set(event)
            effects_token = current_effects.set(effects)
            try:
                call = HandlerCall(
                    event,
                    handler.task_name,
                    handler.queue,
                    task_id,
                    attempts,
                    bus.service,
                    handler.atomic,
                )
                ran = call_handler(chain, handler, event, call)
            except Exception as exc:
                reason, countdown = failure_outcome(handler.retry, exc, attempts)
                if reason is not None:
                    return HandlerRun(
                        handler.task_name, DEAD_LETTERED, attempts, tuple(delays), reason, exc
                    )
                delays.append(countdown)
                if not self.run_retries:
                    return HandlerRun(
                        handler.task_name, RETRYING, attempts, tuple(delays), error=exc
                    )
                continue
            finally:
                current_effects.reset(effects_token)
                current_event.reset(event_token)
            if effects is not None:
                effects.execute()
            if handler.inbox:
                self.handled.add(key)
            status = SUCCEEDED if ran else SKIPPED
            return HandlerRun(handler.task_name, status, attempts if ran else 0, tuple(delays))


def _matches(pattern: str, name: str) -> bool:
    try:
        return pattern_matches(pattern, name)
    except ValueError:
        return False
