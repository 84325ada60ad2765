"""Observability: what tracing, metrics and trace records cost a publish.

Five buses publish the same event to ten subscribing services (ten queues, not consumed),
taking turns in short chunks within each repeat (as benchmarks/publish.py does): one with the
observability settings off, one with ``tracing`` and ``metrics`` on, one with
``trace_records`` on, and one with tracing alone and one with metrics alone, to tell their
costs apart. Tracing runs on the real OpenTelemetry SDK (a ``TracerProvider`` with a
``BatchSpanProcessor``) whose exporter drops the spans, so that the figure is the bus's work
(a span, its context in the envelope), not an exporter's; the metrics are counted in the
process's Prometheus registry, served by no one here. Target: tracing and metrics on ÷ off
≤ 1.2×. Trace records (one more write to the state store per publish) are reported with
their own ratio, no target.

That a bus with these settings off costs nothing is what ``--baseline REV`` measures: its
``baseline-publish`` compares the current code (settings off, the default) with the code
before them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from celery_events import EventBus

from ._stats import Section, Series, Target, ratios
from .publish import publish_to_ten

NAME = "bench.observed"
DATA = {"user_id": 7, "email": "someone@example.com", "plan": "pro"}
#: Variant name -> the bus settings it publishes with.
VARIANTS: dict[str, dict[str, Any]] = {
    "publish to 10, observability off": {},
    "publish to 10, tracing and metrics on": {"tracing": True, "metrics": True},
    "publish to 10, trace records on": {"trace_records": True},
    # Each of the two alone, to tell which one costs what (no target).
    "publish to 10, tracing on": {"tracing": True},
    "publish to 10, metrics on": {"metrics": True},
}


class DroppedSpans(SpanExporter):
    """Takes every span and keeps none: the SDK does all its work, no exporter's is timed."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _sdk() -> TracerProvider:
    """The process's SDK tracer provider, installed on first use (OpenTelemetry takes one
    global provider per process)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(DroppedSpans()))
        trace.set_tracer_provider(provider)
    return provider


def publish(url: str, client: redis.Redis, smoke: bool) -> list[Section]:
    provider = _sdk()
    buses = {}
    for number, (name, settings) in enumerate(VARIANTS.items()):
        app = Celery(f"bench-observability-{number}", broker=url)
        app.conf.task_send_sent_event = False
        buses[name] = EventBus(app, service=f"observability-{number}", **settings)
    results = publish_to_ten(client, buses, NAME, DATA, "o", smoke)
    provider.force_flush()
    off, observed, recorded, traced, counted = (results[name] for name in VARIANTS)
    section = Section(
        title="Publish to 10 subscribers, with tracing, metrics and trace records, and without",
        setup=(
            "Time per published event, queues not consumed, task-sent events off; tracing on"
            " the OpenTelemetry SDK (BatchSpanProcessor, an exporter that drops the spans),"
            " metrics in the process's Prometheus registry, trace records in the same Redis."
            " That the settings off cost nothing is `--baseline REV`'s baseline-publish (the"
            " current code, settings off, against the code before them)."
        ),
        figures=[Series(name, "µs", results[name]) for name in VARIANTS]
        + [
            Series(
                "tracing and metrics cost per event", "µs",
                [o - p for o, p in zip(observed, off, strict=True)],
            ),
            Series("trace records on ÷ off", "×", ratios(recorded, off)),
            Series("tracing alone ÷ off", "×", ratios(traced, off)),
            Series("metrics alone ÷ off", "×", ratios(counted, off)),
        ],
    )
    ratio = Series("tracing and metrics on, publish to 10 ÷ off", "×", ratios(observed, off))
    section.targets = [Target("15. " + ratio.name, ratio, "≤ 1.2×", ratio.median <= 1.2)]
    return [section]
