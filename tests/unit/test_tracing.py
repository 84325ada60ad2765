"""``tracing=True``: a ``send`` span per publish, a ``process`` span per delivery run, the
context carried in the event's ``traceparent`` (memory backend, the OpenTelemetry SDK)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from celery_events import ConfigurationError, Event, EventBus, Middleware, PublishResult
from celery_events.backends import memory
from celery_events.middleware import PublishCall, PublishNext
from celery_events.observability import tracing
from celery_events.testing import HandlerRunner

from ..services._spans import add_exporter

MEMORY = "memory://"
_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def sdk() -> None:
    """The SDK, once per process (OpenTelemetry allows one global tracer provider)."""
    add_exporter(_EXPORTER)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


@pytest.fixture(autouse=True)
def _reset_memory() -> Iterator[None]:
    yield
    memory.reset()


def service(name: str, **settings: object) -> EventBus:
    options: dict[str, object] = {"tracing": True, "retry_jitter": False, **settings}
    return EventBus(Celery(name, broker=MEMORY), service=name, **options)  # type: ignore[arg-type]


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def test_a_publish_makes_one_send_span_whose_context_travels_in_the_event(
    spans: InMemorySpanExporter,
) -> None:
    # Given a shop with tracing and a billing service subscribed
    shop, billing = service("shop"), service("billing")
    billing.subscribe("order.placed", name="invoice")(lambda event: None)
    billing.register()
    tracer = trace.get_tracer("tests")

    # When the shop publishes inside a web request's span
    with tracer.start_as_current_span("POST /orders") as request:
        result = shop.publish("order.placed", {"order_id": 7, "card": "4242"})

    # Then one PRODUCER span "send order.placed", child of the request, says what was sent
    [send] = named(spans, "send order.placed")
    assert send.kind is SpanKind.PRODUCER
    assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
    assert dict(send.attributes or {}) == {
        "messaging.system": "memory",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": "order.placed",
        "messaging.message.id": result.event.id,
        "messaging.message.conversation_id": result.event.correlation_id,
        "messaging.batch.message_count": 1,
    }
    # And the event carries the span's context as the W3C traceparent extension
    context = send.get_span_context()
    assert result.event.extensions["traceparent"] == (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    )
    assert "tracestate" not in result.event.extensions  # empty: left out
    shop.close()
    billing.close()


def test_each_run_of_a_delivery_gets_a_process_span_linked_to_the_send_span(
    spans: InMemorySpanExporter,
) -> None:
    # Given a handler that fails once, then succeeds, and makes a span of its own
    shop, billing = service("shop"), service("billing", max_retries=2, retry_backoff=0.01)
    failures: list[int] = []
    tracer = trace.get_tracer("tests")

    @billing.subscribe("order.placed")
    def invoice(event: Event) -> None:
        with tracer.start_as_current_span("render invoice"):
            if not failures:
                failures.append(1)
                raise ConnectionError("the printer is off")
            billing.publish("invoice.sent", {"order_id": event.data["order_id"]})

    billing.subscribe("invoice.sent", name="archive")(lambda event: None)
    billing.register()

    # When the shop publishes and the billing worker runs the delivery and its retry
    result = shop.publish("order.placed", {"order_id": 7})
    runs = HandlerRunner().work(billing)

    # Then two CONSUMER spans "process order.placed": attempts 1 and 2, each a new trace
    # linked to the one send span
    [send] = named(spans, "send order.placed")
    first, second = named(spans, "process order.placed")
    assert [r.status for r in runs][:1] == ["succeeded"]
    for span, attempt, outcome in ((first, 1, "retried"), (second, 2, "succeeded")):
        attributes = dict(span.attributes or {})
        assert span.kind is SpanKind.CONSUMER
        assert (attributes[tracing.ATTEMPT], attributes[tracing.OUTCOME]) == (attempt, outcome)
        assert [link.context.span_id for link in span.links] == [send.get_span_context().span_id]
        assert span.parent is None
        assert span.get_span_context().trace_id != send.get_span_context().trace_id
        assert attributes["messaging.destination.name"] == "events.billing"
        assert attributes["messaging.consumer.group.name"] == "billing"
        assert attributes["messaging.message.id"] == result.event.id
        assert attributes[tracing.HANDLER] == "billing.invoice"
    # And the failed run says why, with ERROR status and the exception recorded
    assert first.status.status_code is StatusCode.ERROR
    assert first.attributes is not None and first.attributes["error.type"] == "ConnectionError"
    assert [e.name for e in first.events] == ["exception"]
    assert second.status.status_code is StatusCode.UNSET
    # And the handler's own span, and the send span of what it published, are its children
    renders = named(spans, "render invoice")
    assert [r.parent.span_id for r in renders if r.parent] == [
        first.get_span_context().span_id, second.get_span_context().span_id,
    ]
    [sent] = named(spans, "send invoice.sent")
    assert sent.parent is not None and sent.parent.span_id == renders[1].get_span_context().span_id
    [archived] = named(spans, "process invoice.sent")
    assert archived.links[0].context.span_id == sent.get_span_context().span_id
    shop.close()
    billing.close()


def test_parent_mode_makes_the_process_span_a_child_of_the_send_span(
    spans: InMemorySpanExporter,
) -> None:
    shop, billing = service("shop"), service("billing", tracing_context="parent")
    billing.subscribe("order.placed", name="invoice")(lambda event: None)
    billing.register()

    shop.publish("order.placed", {"order_id": 7})
    HandlerRunner().work(billing)

    [send] = named(spans, "send order.placed")
    [process] = named(spans, "process order.placed")
    assert process.parent is not None and process.parent.span_id == send.get_span_context().span_id
    assert process.get_span_context().trace_id == send.get_span_context().trace_id
    assert list(process.links) == []
    shop.close()
    billing.close()


def test_a_dead_letter_and_its_replay_point_at_the_original_send_span(
    spans: InMemorySpanExporter,
) -> None:
    # Given a handler that fails until it is fixed, and gives up after one retry
    shop, billing = service("shop"), service("billing", max_retries=1, retry_backoff=0.01)
    broken = [True]

    @billing.subscribe("order.placed")
    def invoice(event: Event) -> None:
        if broken[0]:
            raise ValueError("no invoice template")

    billing.register()
    result = shop.publish("order.placed", {"order_id": 7})
    runner = HandlerRunner()
    runner.work(billing)
    [send] = named(spans, "send order.placed")
    original = send.get_span_context().span_id

    # When the fixed handler's dead letter is replayed
    broken[0] = False
    [letter] = billing.dead_letters.replay()
    runner.work(billing)

    # Then the runs say retried, dead_lettered, then succeeded, all linked to the first send
    runs = named(spans, "process order.placed")
    assert [(s.attributes or {})[tracing.OUTCOME] for s in runs] == [
        "retried", "dead_lettered", "succeeded",
    ]
    assert [link.context.span_id for s in runs for link in s.links] == [original] * 3
    assert (runs[1].attributes or {})[tracing.REASON] == "retries_exhausted"
    # And the replay's own send span is linked to the original, whose context the event kept
    [_, replay] = named(spans, "send order.placed")
    assert (replay.attributes or {})["messaging.operation.name"] == "replay"
    assert [link.context.span_id for link in replay.links] == [original]
    assert letter.envelope is not None
    assert letter.envelope["traceparent"] == result.event.extensions["traceparent"]
    shop.close()
    billing.close()


def test_runs_that_never_reach_the_handler_still_get_a_process_span(
    spans: InMemorySpanExporter,
) -> None:
    # Given a handler that already handled an event
    billing = service("billing")
    billing.subscribe("order.placed", name="invoice")(lambda event: None)
    event = Event.create("order.placed", {"order_id": 7}, source="shop")
    runner = HandlerRunner()
    runner.run(billing, event)

    # When the same event comes again, and then an envelope nobody can read
    [again] = runner.run(billing, event)
    [unreadable] = runner.run(billing, {"type": "order.placed", "id": 3})

    # Then each run has its span, over the run's own times, with its outcome
    assert (again.status, unreadable.status) == ("skipped", "dead_lettered")
    processed = [s for s in spans.get_finished_spans() if s.name.startswith("process")]
    assert [(s.name, (s.attributes or {})[tracing.OUTCOME]) for s in processed] == [
        ("process order.placed", "succeeded"),
        ("process order.placed", "duplicate_skipped"),
        ("process unknown", "dead_lettered"),
    ]
    skipped = processed[1]
    assert skipped.start_time is not None and skipped.end_time is not None
    assert skipped.start_time <= skipped.end_time
    assert processed[2].status.status_code is StatusCode.ERROR
    billing.close()


class Defer(Middleware):
    """Puts every event aside, as Django's publish on commit does."""

    def __init__(self) -> None:
        self.kept: list[Event] = []

    def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
        self.kept.append(call.event)
        return PublishResult(call.event, deferred=True)


class Refuse(Middleware):
    def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
        raise PermissionError("shop may not publish order.placed")


def test_a_deferred_publish_says_so_and_the_kept_event_holds_the_context(
    spans: InMemorySpanExporter,
) -> None:
    defer = Defer()
    shop = EventBus(Celery("shop", broker=MEMORY), service="shop", tracing=True,
                    middleware=[defer])

    shop.publish("order.placed", {"order_id": 7})

    [send] = named(spans, "send order.placed")
    attributes = dict(send.attributes or {})
    assert attributes[tracing.DEFERRED] is True
    assert "messaging.batch.message_count" not in attributes
    [kept] = defer.kept
    assert kept.extensions["traceparent"].split("-")[2] == f"{send.get_span_context().span_id:016x}"

    # When the relay sends the kept event later, its send span links to the first
    shop.close()
    relay = EventBus(Celery("shop", broker=MEMORY), service="shop", tracing=True)
    relayed = relay.publish_event(kept)
    assert relayed.event.extensions["traceparent"] == kept.extensions["traceparent"]
    [_, resent] = named(spans, "send order.placed")
    assert [link.context.span_id for link in resent.links] == [send.get_span_context().span_id]
    relay.close()


def test_a_refused_publish_ends_its_span_in_error_and_still_raises(
    spans: InMemorySpanExporter,
) -> None:
    shop = EventBus(Celery("shop", broker=MEMORY), service="shop", tracing=True,
                    middleware=[Refuse()])

    with pytest.raises(PermissionError):
        shop.publish("order.placed", {"order_id": 7})

    [send] = named(spans, "send order.placed")
    assert send.status.status_code is StatusCode.ERROR
    assert (send.attributes or {})["error.type"] == "PermissionError"
    shop.close()


def test_no_event_data_goes_into_span_attributes(spans: InMemorySpanExporter) -> None:
    shop, billing = service("shop"), service("billing")
    billing.subscribe("order.placed", name="invoice")(lambda event: None)
    billing.register()

    shop.publish("order.placed", {"card": "4242-secret"})
    HandlerRunner().work(billing)

    values = [str(v) for s in spans.get_finished_spans() for v in (s.attributes or {}).values()]
    assert values and not [v for v in values if "4242" in v]
    shop.close()
    billing.close()


class Broken:
    """A tracer that fails, as a misconfigured SDK might."""

    def start_span(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("exporter misconfigured")


def test_a_failing_tracer_fails_neither_publish_nor_delivery(
    spans: InMemorySpanExporter,
) -> None:
    shop, billing = service("shop"), service("billing")
    seen: list[int] = []
    billing.subscribe("order.placed", name="invoice")(lambda e: seen.append(e.data["n"]))
    billing.register()
    for bus in (shop, billing):
        [middleware] = [m for m in bus.middleware if isinstance(m, tracing.Tracing)]
        middleware._tracer = Broken()  # type: ignore[assignment]

    result = shop.publish("order.placed", {"n": 1})
    [run] = HandlerRunner().work(billing)

    assert "traceparent" not in result.event.extensions
    assert run.status == "succeeded" and seen == [1]
    shop.close()
    billing.close()


def test_tracing_without_opentelemetry_installed_is_refused_at_bus_creation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tracing, "trace", None)

    with pytest.raises(ConfigurationError, match=r"pip install 'celery-events\[otel\]'"):
        EventBus(Celery("shop", broker=MEMORY), service="shop", tracing=True)


@pytest.mark.parametrize(
    ("broker", "system"),
    [
        ("redis://localhost:6379/0", "redis"),
        ("sentinel://localhost:26379/0", "redis"),
        ("amqp://guest:guest@localhost:5672//", "rabbitmq"),
        (MEMORY, "memory"),
    ],
)
def test_messaging_system_names_the_broker_behind_the_backend(broker: str, system: str) -> None:
    app = Celery("shop", broker=broker)
    app.conf.broker_transport_options = {"master_name": "primary"}
    bus = EventBus(app, service="shop", tracing=True)
    [middleware] = [m for m in bus.middleware if isinstance(m, tracing.Tracing)]

    assert middleware.system == system
    bus.close()
