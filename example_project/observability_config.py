"""The observability of the demo's services: traces, metrics and trace records (one place for
all three services, as ``trust_config.py`` is for signing).

Each service passes ``observability_settings("<its name>")`` into its bus settings and calls
``configure_tracing("<its name>")`` once in every process that runs its code (the web server
and the worker):

- **Traces** (``tracing``): the bus makes OpenTelemetry spans, a ``send {event}`` span per
  publish and a ``process {event}`` span per delivery run; the application, not the library,
  chooses where they go. Here each process writes its spans, one JSON object per line, to its
  own file ``spans/{service}-{pid}.jsonl`` in the data directory (a worker's pool processes
  each have theirs). A real deployment would hand them to an OTLP exporter instead.
- **Metrics** (``metrics``, ``metrics_port``): each worker serves Prometheus series on
  ``http://127.0.0.1:{port}/metrics``, its port read from ``DEMO_METRICS_PORT_{SERVICE}``
  (``run_demo.py`` picks free ones; the Procfile's defaults are 9101, 9102 and 9103).
- **Trace records** (``trace_records``): every event, its cause and each delivery's state,
  for ``celery eventbus trace EVENT_ID``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

DATA_DIR = Path(os.environ.get("DEMO_DATA_DIR", Path(__file__).resolve().parent / "var"))
SPANS_DIR = DATA_DIR / "spans"
#: The Procfile's fixed ports; ``run_demo.py`` sets free ones in the environment.
DEFAULT_METRICS_PORTS = {"users": 9101, "orders": 9102, "notifications": 9103}
#: Spans reach their file within this many milliseconds (the SDK's default is 5 s): the demo
#: reads them back while it runs.
EXPORT_DELAY_MS = 500

_configured_lock = threading.Lock()
_configured: TracerProvider | None = None


def metrics_port(service: str) -> int:
    """The port ``service``'s worker serves ``/metrics`` on."""
    variable = f"DEMO_METRICS_PORT_{service.upper()}"
    value = os.environ.get(variable, str(DEFAULT_METRICS_PORTS[service]))
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"{variable} must be a port number, not {value!r}.") from None


def observability_settings(service: str) -> dict[str, Any]:
    """The bus settings that turn traces, metrics and trace records on for ``service``."""
    return {
        "tracing": True,
        "metrics": True,
        "metrics_port": metrics_port(service),
        "trace_records": True,
    }


class JsonLinesExporter(SpanExporter):
    """Appends each span, as one line of JSON, to ``{directory}/{service}-{pid}.jsonl``.

    The file is named when spans are written, not when the exporter is made, so that a
    worker's pool processes (forked from its main process) each write their own file.
    """

    def __init__(self, directory: Path, service: str) -> None:
        self.directory = directory
        self.service = service

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        # One line per span, written in one call: a reader never sees half a span, except the
        # last line while it is being written (read_spans skips a line with no newline yet).
        lines = "".join(_compact(span.to_json()) + "\n" for span in spans)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with (self.directory / f"{self.service}-{os.getpid()}.jsonl").open("a") as out:
                out.write(lines)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release: the file is opened for each batch."""


def configure_tracing(service: str) -> TracerProvider:
    """Install, once per process, the OpenTelemetry SDK that writes this process's spans.

    The provider flushes its spans at exit; a worker's pool processes flush on Celery's
    ``worker_process_shutdown`` too, since they leave without running ``atexit`` handlers.
    """
    global _configured
    with _configured_lock:
        if _configured is None:
            provider = TracerProvider(resource=Resource.create({"service.name": service}))
            provider.add_span_processor(
                BatchSpanProcessor(
                    JsonLinesExporter(SPANS_DIR, service), schedule_delay_millis=EXPORT_DELAY_MS
                )
            )
            trace.set_tracer_provider(provider)
            _flush_when_pool_processes_exit(provider)
            _configured = provider
        return _configured


def _flush_when_pool_processes_exit(provider: TracerProvider) -> None:
    from celery import signals

    def flush(**_: Any) -> None:
        provider.force_flush()

    signals.worker_process_shutdown.connect(flush, weak=False)
    signals.worker_shutdown.connect(flush, weak=False)


def read_spans(directory: Path = SPANS_DIR) -> list[dict[str, Any]]:
    """Every span the demo's processes exported so far, as the SDK's JSON form of it."""
    spans = []
    for path in sorted(directory.glob("*.jsonl")):
        complete = path.read_text().split("\n")[:-1]
        spans += [json.loads(line) for line in complete if line.strip()]
    return spans


def _compact(text: str) -> str:
    return json.dumps(json.loads(text), separators=(",", ":"))
