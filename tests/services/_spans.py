"""An OpenTelemetry SDK set up from ``CELERY_EVENTS_TEST_SPANS``: every finished span of this
process (and of its forked pool processes) is appended to that file as one JSON line."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

SPANS_FILE = "CELERY_EVENTS_TEST_SPANS"


def as_record(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "links": [f"{link.context.span_id:016x}" for link in span.links],
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "start": span.start_time,
        "pid": os.getpid(),
    }


class JsonLinesExporter(SpanExporter):
    """Appends each span to ``path``; opened per batch, so forked processes share it safely
    (one ``write`` of a line with O_APPEND)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(as_record(span)) + "\n" for span in spans)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(lines)
        return SpanExportResult.SUCCESS


def configure() -> None:
    """Send this process's spans to the file the environment names (nothing if none)."""
    path = os.environ.get(SPANS_FILE)
    if not path:
        return
    provider = TracerProvider()
    # Simple (synchronous) export: a pool process's spans are in the file when its task
    # ends, whatever happens to the process afterwards.
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(path)))
    trace.set_tracer_provider(provider)


def add_exporter(exporter: SpanExporter) -> None:
    """Send this process's spans to ``exporter`` as they end, on its one SDK tracer provider
    (OpenTelemetry allows one global provider per process: the first call sets it)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
