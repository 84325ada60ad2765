"""OpenTelemetry spans of publishes and deliveries (setting ``tracing``; the ``otel`` extra).

Spans follow the OpenTelemetry messaging semantic conventions:

- ``send {event}`` (PRODUCER), one per publish, around the rest of the publish chain. Its
  parent is whatever span is current in the publisher (a web request's). Its context goes into
  the event as the CloudEvents distributed-tracing extension attributes ``traceparent`` and
  ``tracestate`` (W3C trace context), so it travels in the envelope: retries, the outbox (the
  stored event keeps it), dead letters and their replay (the envelope keeps it) all carry it.
  An event that already carries a ``traceparent`` (an outbox relay's ``publish_event``, a dead
  letter's replay) keeps it: the send span of the relay or replay is *linked* to the carried
  context, and every delivery still points at the span of the original publish.
- ``process {event}`` (CONSUMER), one per run of a delivery (each attempt). It is started in
  the handle scope, so it is current while the handler runs (spans the handler makes are its
  children, events it publishes get their send spans under it), and ended in ``on_settled``
  with the run's outcome. Runs that never reach the handler (a duplicate skipped, a delivery
  refused before it, an unreadable envelope, a lease held elsewhere) get a span made in
  ``on_settled`` over the run's own start and end times. With ``tracing_context="link"``
  (default) the span starts a new trace per delivery and is linked to the producer's context
  from the event's ``traceparent``; with ``"parent"`` it is that context's child. A span that
  is current in the worker when the run starts (``opentelemetry-instrumentation-celery``'s
  ``run/{task}``) is always the parent, the producer's context then a link: one delivery has
  one ``process`` span, nested in Celery's own.

No event data goes into span attributes. Tracing never fails a publish or a delivery: an
error of its own is logged and the publish or delivery goes on untraced.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..middleware.base import (
    HandleNext,
    HandlerCall,
    Middleware,
    Outcome,
    PublishCall,
    PublishNext,
    Settled,
)
from ..results import PublishResult

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the otel extra is not installed: Tracing(bus) says so
    trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, Span, Tracer

    from ..envelope import Event

__all__ = ["Tracing", "OUTCOME", "ATTEMPT", "HANDLER"]

log = logging.getLogger(__name__)

#: The process span's attribute holding the run's :class:`~celery_events.middleware.Outcome`.
OUTCOME = "celery_events.outcome"
#: The process span's attribute holding the attempt (1 for the first run).
ATTEMPT = "celery_events.attempt"
#: The process span's attribute holding the handler's task name.
HANDLER = "celery_events.handler"
#: The process span's attribute holding a dead letter's reason.
REASON = "celery_events.dead_letter.reason"
#: The send span's attribute: true when the publish was deferred (publish on commit, outbox).
DEFERRED = "celery_events.deferred"

# What ``messaging.system`` says for each backend.
_SYSTEMS = {"redis": "redis", "sentinel": "redis", "amqp": "rabbitmq", "memory": "memory"}
_CONTEXT_KEYS = ("traceparent", "tracestate")
# Outcomes of a run that failed: its span's status is ERROR.
_FAILED = frozenset({Outcome.RETRIED, Outcome.DEAD_LETTERED, Outcome.FAILED})


class Tracing(Middleware):
    """OpenTelemetry ``send`` and ``process`` spans; made by the bus for ``tracing=True``.

    Uses only ``opentelemetry-api``: spans go wherever the application's tracer provider
    sends them (configure the SDK in each process, workers included).

    >>> from celery import Celery
    >>> from opentelemetry import trace
    >>> from opentelemetry.sdk.trace import TracerProvider
    >>> from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    >>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    >>> from celery_events import EventBus
    >>> spans = InMemorySpanExporter()
    >>> provider = TracerProvider()
    >>> provider.add_span_processor(SimpleSpanProcessor(spans))
    >>> trace.set_tracer_provider(provider)       # the application's, once per process
    >>> tracer = trace.get_tracer("shop")
    >>> bus = EventBus(Celery("shop", broker="memory://"), service="shop", tracing=True)
    >>> with tracer.start_as_current_span("POST /orders"):
    ...     result = bus.publish("order.placed", {"order_id": 7})
    >>> [span.name for span in spans.get_finished_spans()]
    ['send order.placed', 'POST /orders']
    """

    def __init__(self, bus: Any) -> None:
        if trace is None:
            raise ConfigurationError(
                f"Service {bus.service!r} has tracing=True but OpenTelemetry is not installed;"
                " install the otel extra (pip install 'celery-events[otel]') or set"
                " tracing=False."
            )
        # Only kept: the bus is not fully made yet (its backend is read on first use).
        self._bus = bus
        self._system: str | None = None
        self._tracer: Tracer = trace.get_tracer("celery_events")
        self._propagator = TraceContextTextMapPropagator()
        # Process spans started in a handle scope, until their run settles: by task id and
        # thread (a pool of threads or greenlets runs several deliveries at once).
        self._open: dict[tuple[str, int], Span] = {}

    def __repr__(self) -> str:
        return f"Tracing(service={self._bus.service!r})"

    @property
    def system(self) -> str:
        """``messaging.system`` of the bus's backend: redis, rabbitmq or memory."""
        if self._system is None:
            name = self._bus.backend.name
            self._system = _SYSTEMS.get(name, name)
        return self._system

    # -- publishing ---------------------------------------------------------------------

    def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
        try:
            span, context, traced = self._send_started(call)
            token = otel_context.attach(context)
        except Exception:
            log.exception(
                "celery-events: tracing could not start the send span of %s", call.event.id
            )
            return call_next(call)
        try:
            result = call_next(traced)
        except BaseException as exc:
            otel_context.detach(token)
            _safely(_failed, span, exc)
            raise
        otel_context.detach(token)
        _safely(_sent, span, result)
        return result

    def _send_started(self, call: PublishCall) -> tuple[Span, Context, PublishCall]:
        """The send span, the context it is current in, and the call whose event carries
        it."""
        event = call.event
        carried = self._carried(event)
        span = self._tracer.start_span(
            f"send {event.name}",
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": self.system,
                "messaging.operation.type": "send",
                # "publish", or "replay" for a dead letter sent again
                "messaging.operation.name": call.origin,
                "messaging.destination.name": event.name,
                "messaging.message.id": event.id,
                "messaging.message.conversation_id": event.correlation_id,
            },
            links=None if carried is None else [trace.Link(carried)],
        )
        context = trace.set_span_in_context(span)
        sent = span.get_span_context()
        if carried is not None or not sent.is_valid:
            # A relay or replay keeps the context of the original publish; a tracer that
            # makes no real spans (no SDK) has none to give.
            return span, context, call
        # The W3C header, as the propagator writes it, without its context lookups (and
        # int.to_bytes().hex(), which costs less than a format spec).
        traceparent = (
            f"00-{sent.trace_id.to_bytes(16, 'big').hex()}"
            f"-{sent.span_id.to_bytes(8, 'big').hex()}-{sent.trace_flags:02x}"
        )
        state = sent.trace_state.to_header() if sent.trace_state else None
        return span, context, call.with_extensions(
            {"traceparent": traceparent, "tracestate": state or None}
        )

    def _carried(self, event: Event) -> trace.SpanContext | None:
        """The producer's span context the event carries, or None."""
        extensions = event.extensions
        if "traceparent" not in extensions:
            return None
        carrier = {key: str(extensions[key]) for key in _CONTEXT_KEYS if key in extensions}
        found = trace.get_current_span(self._propagator.extract(carrier)).get_span_context()
        return found if found.is_valid else None

    # -- delivering ---------------------------------------------------------------------

    def handle(self, call: HandlerCall, call_next: HandleNext) -> Any:
        key = (call.task_id, threading.get_ident())
        try:
            span = self._process_started(
                call.event, call.queue, call.service, call.handler, call.attempt
            )
            stale = self._open.pop(key, None)
            if stale is not None:  # never settled (cannot happen): do not leak it
                stale.end()
            self._open[key] = span
            token = otel_context.attach(trace.set_span_in_context(span))
        except Exception:
            log.exception(
                "celery-events: tracing could not start the process span of %s", call.task_id
            )
            return call_next(call)
        try:
            return call_next(call)
        finally:
            otel_context.detach(token)

    def on_settled(self, settled: Settled) -> None:
        span = self._open.pop((settled.task_id, threading.get_ident()), None)
        if span is None:
            # The run never reached the handler: its span covers the run itself.
            event = settled.event
            span = self._process_started(
                event, settled.queue, settled.service, settled.handler, settled.attempt,
                start_time=_nanoseconds(settled.started_at),
            )
            end_time: int | None = _nanoseconds(settled.finished_at)
        else:
            end_time = None
        try:
            _settle(span, settled)
        finally:
            span.end(end_time=end_time)

    def _process_started(
        self,
        event: Event | None,
        queue: str,
        service: str,
        handler: str,
        attempt: int,
        start_time: int | None = None,
    ) -> Span:
        attributes: dict[str, Any] = {
            "messaging.system": self.system,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": queue,
            "messaging.consumer.group.name": service,
            HANDLER: handler,
            ATTEMPT: attempt,
        }
        producer = None
        if event is not None:
            attributes["messaging.message.id"] = event.id
            attributes["messaging.message.conversation_id"] = event.correlation_id
            producer = self._carried(event)
        parent = None  # the current context: Celery's run/{task} span, when instrumented
        links = _links(producer)
        if (
            producer is not None
            and self._bus.settings.tracing_context == "parent"
            and not trace.get_current_span().get_span_context().is_valid
        ):
            parent, links = trace.set_span_in_context(trace.NonRecordingSpan(producer)), None
        return self._tracer.start_span(
            f"process {event.name if event is not None else 'unknown'}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
            start_time=start_time,
        )


def _links(context: trace.SpanContext | None) -> list[Link] | None:
    return None if context is None else [trace.Link(context)]


def _nanoseconds(unix_time: float) -> int:
    return int(unix_time * 1e9)


def _sent(span: Span, result: PublishResult) -> None:
    try:
        if result.deferred:
            span.set_attribute(DEFERRED, True)
        else:
            span.set_attribute("messaging.batch.message_count", len(result.deliveries))
    finally:
        span.end()


def _failed(span: Span, error: BaseException) -> None:
    try:
        _error(span, error)
    finally:
        span.end()


def _error(span: Span, error: BaseException) -> None:
    span.set_attribute("error.type", type(error).__qualname__)
    span.record_exception(error)
    span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))


def _settle(span: Span, settled: Settled) -> None:
    span.set_attribute(OUTCOME, settled.outcome)
    span.set_attribute(ATTEMPT, settled.attempt)
    if settled.reason is not None:
        span.set_attribute(REASON, settled.reason)
    if settled.redelivered:
        span.set_attribute("celery_events.redelivered", True)
    if settled.error is not None and settled.outcome in _FAILED:
        _error(span, settled.error)
    elif settled.error is not None:
        # Handed back during an outage: no failure of the handler, but worth seeing.
        span.set_attribute("error.type", type(settled.error).__qualname__)


def _safely(step: Any, *args: Any) -> None:
    try:
        step(*args)
    except Exception:
        log.exception("celery-events: tracing failed (the publish or delivery goes on)")

