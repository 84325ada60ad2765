"""Observability: OpenTelemetry spans, Prometheus metrics and the trace records behind
``celery eventbus trace``, each a middleware on the bus's chain.

- :mod:`.tracing` (setting ``tracing``): a ``send {event}`` PRODUCER span per publish and a
  ``process {event}`` CONSUMER span per delivery run (OpenTelemetry messaging conventions),
  the context carried in the envelope (``traceparent``, ``tracestate``: the CloudEvents
  distributed tracing extension), so it survives retries, the outbox, dead letters and replay.
- :mod:`.metrics` (setting ``metrics``): Prometheus series of publishes, deliveries by
  outcome, handler duration, delivery lag, redeliveries, dead letters, queue depth and age;
  served on ``metrics_port`` by the worker.
- :mod:`.records` (setting ``trace_records``): each event, its cause and each delivery's
  state, worker and timings, kept ``trace_ttl`` seconds, read by ``celery eventbus trace``.

Built from the service's own settings when its bus is made (:func:`middleware_for`), right
after the contracts' validation and before the user's middleware, so that a span covers what
every later middleware does and the trace context is in the event before it is deferred
(publish on commit, the outbox) or signed (the trust middleware, innermost). A bus with none
of these settings gets none of them and pays nothing.
"""

from __future__ import annotations

from typing import Any

from ..middleware.base import Middleware

__all__ = ["middleware_for"]


def middleware_for(bus: Any) -> list[Middleware]:
    """The observability middleware the settings of ``bus`` (an EventBus) turn on, outermost
    first: tracing, metrics, trace records."""
    settings = bus.settings
    found: list[Middleware] = []
    if settings.tracing:
        from .tracing import Tracing

        found.append(Tracing(bus))
    if settings.metrics:
        from .metrics import Metrics

        found.append(Metrics(bus))
    if settings.trace_records:
        from .records import TraceRecords

        found.append(TraceRecords(bus))
    return found
