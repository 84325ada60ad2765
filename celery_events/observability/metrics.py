"""Prometheus metrics of publishes and deliveries, and the worker's exporter (setting ``metrics``).

The series (``prometheus_client``; the ``prometheus`` extra). Every label value is bounded: a
service, an event name, a handler's task name, an outcome, a dead letter's reason; never an
event id, a correlation id or a task id.

==============================================  =========  ===================================
series                                          type       labels
==============================================  =========  ===================================
``celery_events_published_total``               counter    service, event
``celery_events_publishes_deferred_total``      counter    service, event
``celery_events_deliveries_total``              counter    service, handler, outcome
``celery_events_handler_duration_seconds``      histogram  service, handler
``celery_events_delivery_lag_seconds``          histogram  service, handler
``celery_events_redeliveries_total``            counter    service, handler
``celery_events_dead_letters_total``            counter    service, handler, reason
``celery_events_queue_waiting``                 gauge      service (worker's exporter only)
``celery_events_queue_in_flight``               gauge      service (worker's exporter only)
``celery_events_queue_oldest_waiting_seconds``  gauge      service (worker's exporter only)
``celery_events_status_errors_total``           counter    (worker's exporter only)
==============================================  =========  ===================================

- *published* counts an event when it is sent, in the process that sends it (its ``service``
  is the event's source). A publish a Django bus defers is counted in *publishes deferred*
  at the caller instead: written to the outbox, it is counted in *published* once, when the
  relay sends it; sent after the commit, it is not counted again (the commit sends it below
  this scope). A dead letter's replay is not a publish and is not counted.
- *deliveries* counts every run of every delivery by its :class:`~celery_events.middleware.Outcome`
  (``succeeded``, ``retried``, ``dead_lettered``, ``duplicate_skipped``, ``waiting``,
  ``handed_back``, ``ignored``, ``failed``), in the worker process that ran it.
- *handler duration*: how long each handler call ran (every run that called it).
- *delivery lag*: from the event's ``time`` to the first run's handler start (a retry's wait
  is its backoff, not lag, so later runs are left out).
- The queue gauges are read at scrape time from the backend's queues (what ``celery
  eventbus status`` shows, for every subscribing service), at most once per
  :data:`STATUS_TTL` seconds; when they cannot be read the scrape still answers, without
  them, and *status errors* counts it.

The worker (``metrics_port`` set) serves ``http://<host>:<port>/metrics`` from its main
process on every interface, with the sum over its pool processes: before the pool forks it
points ``PROMETHEUS_MULTIPROC_DIR`` at the directory the user gave (emptied first) or at a
private one, so that each process writes its own series there (prometheus_client's
multiprocess mode); a worker that cannot listen on the port refuses to start. With
``metrics_port=None`` nothing is served: the series are in prometheus_client's default
registry of each process, for an app that exports them itself (``make_wsgi_app()``).
"""

from __future__ import annotations

import atexit
import glob
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import bootsteps, signals

from .. import _buses
from .._worker import refuse_to_start
from ..errors import ConfigurationError
from ..middleware.base import PUBLISH, Middleware, Outcome, PublishCall, PublishNext, Settled
from ..results import PublishResult

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.core import Metric

    from ..status import ServiceStatus

__all__ = ["Metrics", "QueueStatusCollector", "STATUS_TTL", "serve"]

log = logging.getLogger(__name__)

#: Seconds a reading of the queues is reused by later scrapes (a scrape every 15 s reads
#: Redis at most once per scrape; several Prometheus servers share one reading).
STATUS_TTL = 5.0

# Handlers run from milliseconds to minutes; a delivery waits from milliseconds (an idle
# worker) to an hour (a backlog).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
LAG_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600
)

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _require_prometheus() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "The setting metrics=True needs prometheus_client, which is not installed:"
            " pip install 'celery-events[prometheus]', or set metrics=False."
        ) from None


@dataclass(frozen=True)
class _Series:
    published: Counter
    deferred: Counter
    deliveries: Counter
    duration: Histogram
    lag: Histogram
    redeliveries: Counter
    dead_letters: Counter


# One set of series per registry: a process may build several buses (and prometheus_client
# refuses a series name twice in one registry).
_series: weakref.WeakKeyDictionary[CollectorRegistry, _Series] = weakref.WeakKeyDictionary()
_series_lock = threading.Lock()


def _series_in(registry: CollectorRegistry) -> _Series:
    with _series_lock:
        found = _series.get(registry)
        if found is None:
            found = _series[registry] = _make_series(registry)
        return found


def _make_series(registry: CollectorRegistry) -> _Series:
    from prometheus_client import Counter, Histogram

    def counter(name: str, text: str, labels: tuple[str, ...]) -> Counter:
        return Counter(f"celery_events_{name}", text, labels, registry=registry)

    def histogram(name: str, text: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(
            f"celery_events_{name}", text, ("service", "handler"), registry=registry,
            buckets=buckets,
        )

    return _Series(
        published=counter("published", "Events sent, by publishing service and event name.",
                          ("service", "event")),
        deferred=counter(
            "publishes_deferred",
            "Publishes deferred to the end of a database transaction or to the outbox.",
            ("service", "event"),
        ),
        deliveries=counter("deliveries", "Runs of deliveries, by how they ended.",
                           ("service", "handler", "outcome")),
        duration=histogram("handler_duration_seconds", "How long handlers ran.",
                           DURATION_BUCKETS),
        lag=histogram("delivery_lag_seconds",
                      "From an event's publish to its handler's first start.", LAG_BUCKETS),
        redeliveries=counter("redeliveries",
                             "Deliveries run again after a run died without finishing.",
                             ("service", "handler")),
        dead_letters=counter("dead_letters", "Deliveries that became dead letters, by reason.",
                             ("service", "handler", "reason")),
    )


class Metrics(Middleware):
    """Counts publishes and every delivery's runs into Prometheus series (see the module).

    Made by the bus when its setting ``metrics`` is true; ``registry`` (prometheus_client's
    default one when ``None``) is where the series go.

    >>> from celery import Celery
    >>> from prometheus_client import CollectorRegistry
    >>> from celery_events import EventBus
    >>> from celery_events.observability.metrics import Metrics
    >>> app = Celery("orders", broker="memory://")
    >>> bus = EventBus(app, service="orders", metrics=True)   # the default registry
    >>> registry = CollectorRegistry()
    >>> app = Celery("orders", broker="memory://")       # one bus per app: a new one
    >>> bus = EventBus(app, service="orders", middleware=[Metrics(registry=registry)])
    >>> result = bus.publish("order.placed", {"order_id": 7})
    >>> registry.get_sample_value("celery_events_published_total", {"service": "orders", "event": "order.placed"})
    1.0
    """

    def __init__(self, bus: Any = None, *, registry: CollectorRegistry | None = None) -> None:
        _require_prometheus()
        # Only kept: the bus is not fully built when it makes its middleware.
        self._bus = bus
        self._registry = registry
        self._found: _Series | None = None
        # The published counter's child of each (service, event): labels() takes a lock and
        # turns its values into a new tuple of strings on every call, a tenth of what
        # metrics cost a publish. The bus never removes a child from its series.
        self._published: dict[tuple[str, str], Any] = {}
        connect()

    @property
    def _s(self) -> _Series:
        # Made at first use, not when the bus is made: in a worker, that is after the
        # multiprocess directory is set up.
        found = self._found
        if found is None:
            from prometheus_client import REGISTRY

            found = self._found = _series_in(self._registry or REGISTRY)
        return found

    def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
        result = call_next(call)
        if result.deferred and call.origin == PUBLISH:
            self._s.deferred.labels(call.event.source, call.event.name).inc()
        return result

    def on_published(self, result: PublishResult, origin: str) -> None:
        # Heard for every send, the one after a commit included; a replay is no publish.
        if origin == PUBLISH:
            event = result.event
            key = (event.source, event.name)
            counter = self._published.get(key)
            if counter is None:
                counter = self._published[key] = self._s.published.labels(*key)
            counter.inc()

    def on_settled(self, settled: Settled) -> None:
        s = self._s
        service, handler = settled.service, settled.handler
        s.deliveries.labels(service, handler, settled.outcome).inc()
        seconds = settled.handler_seconds
        if seconds is not None:
            s.duration.labels(service, handler).observe(seconds)
            if settled.attempt == 1 and settled.event is not None:
                lag = settled.handler_started_at - settled.event.time.timestamp()  # type: ignore[operator]
                s.lag.labels(service, handler).observe(max(0.0, lag))
        if settled.redelivered:
            s.redeliveries.labels(service, handler).inc()
        if settled.outcome == Outcome.DEAD_LETTERED:
            s.dead_letters.labels(service, handler, settled.reason or "unknown").inc()


class QueueStatusCollector:
    """A prometheus_client collector of every subscribing service's queue depth, in-flight
    deliveries and oldest waiting age, read from the backend of ``bus`` at scrape time.

    ``read`` (``celery_events.status.read_status`` on the bus's registry and queues by
    default) runs at most once per ``ttl`` seconds; a reading that fails leaves the gauges out
    of that scrape and counts ``celery_events_status_errors_total``.

    >>> from celery import Celery
    >>> from prometheus_client import CollectorRegistry
    >>> from celery_events import EventBus
    >>> from celery_events.observability.metrics import QueueStatusCollector
    >>> bus = EventBus(Celery("orders", broker="redis://localhost:6379/0"), service="orders")
    >>> registry = CollectorRegistry()
    >>> registry.register(QueueStatusCollector(bus))
    """

    def __init__(
        self,
        bus: Any,
        *,
        ttl: float = STATUS_TTL,
        read: Callable[[], list[ServiceStatus] | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bus = bus
        self._ttl = ttl
        self._read = read or self._read_backend
        self._clock = clock
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._last: list[ServiceStatus] | None = None
        self._errors = 0
        self._queues: Any = None

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        statuses = self._current()
        if statuses is not None:
            waiting = GaugeMetricFamily(
                "celery_events_queue_waiting", "Deliveries waiting in the service's queues.",
                labels=["service"],
            )
            in_flight = GaugeMetricFamily(
                "celery_events_queue_in_flight",
                "Deliveries a worker took and has not acknowledged.", labels=["service"],
            )
            oldest = GaugeMetricFamily(
                "celery_events_queue_oldest_waiting_seconds",
                "Age of the service's oldest waiting delivery (0: none waits).",
                labels=["service"],
            )
            for status in statuses:
                waiting.add_metric([status.service], status.waiting)
                in_flight.add_metric([status.service], status.in_flight)
                oldest.add_metric([status.service], status.oldest_waiting or 0.0)
            yield from (waiting, in_flight, oldest)
        errors = CounterMetricFamily(
            "celery_events_status_errors", "Scrapes whose reading of the queues failed."
        )
        errors.add_metric([], self._errors)
        yield errors

    def _current(self) -> list[ServiceStatus] | None:
        with self._lock:
            now = self._clock()
            if self._read_at is not None and now - self._read_at < self._ttl:
                return self._last
            # A failed reading is kept too: a broker that is away is not asked again at once.
            self._read_at = now
            try:
                self._last = self._read()
            except Exception as exc:
                self._errors += 1
                self._last = None
                self._queues = None
                log.warning("celery-events: the queues' status could not be read: %s", exc)
            return self._last

    def _read_backend(self) -> list[ServiceStatus] | None:
        from ..status import read_status

        backend = self._bus.backend
        if not backend.capabilities.queue_status:
            return None
        if self._queues is None:
            self._queues = backend.transport.queue_reader(self._bus.settings.publish_timeout)
        return read_status(self._bus.registry.subscriptions(), self._queues)


# -- the worker's exporter -------------------------------------------------------------------


def serve(bus: Any, port: int, host: str = "0.0.0.0") -> Any:
    """Serve ``/metrics`` of every process writing to ``PROMETHEUS_MULTIPROC_DIR``, and the
    queue gauges of ``bus``, on ``host:port`` from a daemon thread; return the server (its
    ``server_port`` is the port, ``shutdown()`` stops it). Raises ``OSError`` when the port
    cannot be bound."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(QueueStatusCollector(bus))
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server


def _multiprocess_directory() -> str:
    """Point prometheus_client's multiprocess mode at the user's directory (emptied) or a
    private one, before the pool forks; return it."""
    from prometheus_client import values

    given = os.environ.get(_MULTIPROC_ENV) or os.environ.get(_MULTIPROC_ENV.lower())
    if given:
        os.makedirs(given, exist_ok=True)
        # Files of an earlier run would be added to this one's counts.
        for path in glob.glob(os.path.join(given, "*.db")):
            os.remove(path)
        directory = given
    else:
        directory = tempfile.mkdtemp(prefix="celery-events-metrics-")
        atexit.register(_remove_private, directory, os.getpid())
    os.environ[_MULTIPROC_ENV] = directory
    # prometheus_client chose its value class when it was imported, maybe before this.
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    return directory


def _remove_private(directory: str, main: int) -> None:
    # Pool processes inherit the exit hooks of the main process, which alone removes it.
    if os.getpid() == main:
        shutil.rmtree(directory, ignore_errors=True)


class MetricsExporter(bootsteps.StartStopStep):  # type: ignore[misc]
    """Serves the worker's metrics on ``metrics_port`` from its main process, after the pool
    started and before the worker consumes; refuses to start a worker that cannot listen."""

    label = "celery-events metrics exporter"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.server: Any = None

    def start(self, parent: Any) -> None:
        bus = _buses.for_app(parent.app)
        port = bus.settings.metrics_port if bus is not None else None
        if bus is None or port is None:
            return
        address = bus.settings.metrics_address
        try:
            self.server = serve(bus, port, address)
        except OSError as exc:
            refuse_to_start(
                f"the metrics exporter cannot listen on {address} port {port}"
                f" ({exc.strerror or exc}). Set metrics_port to a free port, or to None to"
                " serve no metrics."
            )
        log.info(
            "celery-events: metrics on http://%s:%d/metrics", address, self.server.server_port
        )

    def stop(self, parent: Any) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _on_worker_init(sender: Any = None, instance: Any = None, **kwargs: Any) -> None:
    bus = _buses.for_app(instance.app) if instance is not None else None
    settings = getattr(bus, "settings", None)
    if settings is None or not settings.metrics or settings.metrics_port is None:
        return
    directory = _multiprocess_directory()
    log.info("celery-events: pool processes write their metrics to %s", directory)
    instance.app.steps["worker"].add(MetricsExporter)


def _on_process_shutdown(pid: int | None = None, **kwargs: Any) -> None:
    if os.environ.get(_MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]


_connected = False


def connect() -> None:
    """Connect the exporter to Celery's worker signals (once per process)."""
    global _connected
    if _connected:
        return
    _connected = True
    signals.celeryd_init.connect(_on_worker_init, weak=False)
    signals.worker_process_shutdown.connect(_on_process_shutdown, weak=False)
