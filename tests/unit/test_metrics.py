"""The Prometheus series of ``metrics=True``: publishes counted at send (deferred ones apart),
every delivery run by outcome, handler duration and delivery lag, redeliveries, dead letters
by reason, the queue gauges read at scrape time (cached, and never failing a scrape), no id
as a label, and the Grafana dashboard naming only these series. The memory backend and a
private CollectorRegistry; no broker."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from celery import Celery
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from celery_events import ConfigurationError, Event, EventBus, Middleware, PublishCall, Reject
from celery_events.backends import memory
from celery_events.middleware import Outcome, PublishNext, Settled
from celery_events.observability.metrics import Metrics, QueueStatusCollector
from celery_events.results import PublishResult
from celery_events.status import QueueStatus, ServiceStatus
from celery_events.testing import HandlerRunner

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(registry: CollectorRegistry) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return samples(registry).get((name, frozenset(labels.items())))


class Defer(Middleware):
    """Puts every publish aside, as Django's publish-on-commit and outbox do."""

    def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
        return PublishResult(call.event, deferred=True)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def bus(registry: CollectorRegistry) -> Iterator[EventBus]:
    bus = EventBus(
        Celery("billing", broker="memory://"),
        service="billing",
        middleware=[Metrics(registry=registry)],
        retry_jitter=False,
        retry_backoff=0.01,
        max_retries=1,
    )
    yield bus
    bus.close()
    memory.reset()


def placed(time: datetime | None = None) -> Event:
    return Event.create("order.placed", {"order_id": 1}, source="shop", time=time)


def test_a_publish_is_counted_once_by_service_and_event_name(
    bus: EventBus, registry: CollectorRegistry
) -> None:
    bus.subscribe("invoice.sent", name="file")(lambda event: None)
    bus.publish("invoice.sent", {"n": 1})
    bus.publish("invoice.sent", {"n": 2})
    assert value(registry, "celery_events_published_total", service="billing",
                 event="invoice.sent") == 2


def test_a_deferred_publish_is_counted_apart_from_the_sent_ones(registry: CollectorRegistry) -> None:
    bus = EventBus(
        Celery("billing", broker="memory://"), service="billing",
        middleware=[Metrics(registry=registry), Defer()],
    )
    try:
        bus.subscribe("invoice.sent", name="file")(lambda event: None)
        assert bus.publish("invoice.sent", {}).deferred
    finally:
        bus.close()
        memory.reset()
    assert value(registry, "celery_events_publishes_deferred_total", service="billing",
                 event="invoice.sent") == 1
    assert value(registry, "celery_events_published_total", service="billing",
                 event="invoice.sent") is None


def test_each_run_is_counted_by_outcome_with_its_duration_and_the_first_runs_lag(
    bus: EventBus, registry: CollectorRegistry
) -> None:
    bus.subscribe("order.placed", name="note")(lambda event: None)

    @bus.subscribe("order.placed")
    def charge(event: Event) -> None:
        raise RuntimeError("card declined")

    # Given an event published two seconds ago
    event = placed(time=datetime.now(timezone.utc) - timedelta(seconds=2))
    runner = HandlerRunner()
    runner.run(bus, event)  # note succeeds; charge is retried once, then dead-lettered
    runner.run(bus, event, handlers=["billing.note"])  # a duplicate

    def runs(handler: str, outcome: str) -> float | None:
        return value(registry, "celery_events_deliveries_total", service="billing",
                     handler=handler, outcome=outcome)

    assert runs("billing.note", Outcome.SUCCEEDED) == 1
    assert runs("billing.note", Outcome.DUPLICATE_SKIPPED) == 1
    assert runs("billing.charge", Outcome.RETRIED) == 1
    assert runs("billing.charge", Outcome.DEAD_LETTERED) == 1
    assert value(registry, "celery_events_dead_letters_total", service="billing",
                 handler="billing.charge", reason="retries_exhausted") == 1
    # Both of charge's runs called the handler; only the first measures the lag, of about 2 s
    charge_labels = {"service": "billing", "handler": "billing.charge"}
    assert value(registry, "celery_events_handler_duration_seconds_count", **charge_labels) == 2
    assert value(registry, "celery_events_delivery_lag_seconds_count", **charge_labels) == 1
    lag = value(registry, "celery_events_delivery_lag_seconds_sum", **charge_labels)
    assert lag is not None and 2 <= lag < 10
    assert value(registry, "celery_events_delivery_lag_seconds_bucket", le="1.0",
                 **charge_labels) == 0
    assert value(registry, "celery_events_delivery_lag_seconds_bucket", le="2.5",
                 **charge_labels) == 1
    # The duplicate did not call the handler: one timed run of note
    assert value(registry, "celery_events_handler_duration_seconds_count", service="billing",
                 handler="billing.note") == 1


def test_a_rejected_delivery_is_a_dead_letter_with_its_reason(
    bus: EventBus, registry: CollectorRegistry
) -> None:
    @bus.subscribe("order.placed")
    def refuse(event: Event) -> None:
        raise Reject("not for us")

    HandlerRunner().run(bus, placed())
    assert value(registry, "celery_events_dead_letters_total", service="billing",
                 handler="billing.refuse", reason="rejected") == 1


def test_a_redelivered_run_is_counted(registry: CollectorRegistry) -> None:
    metrics = Metrics(registry=registry)
    metrics.on_settled(
        Settled(
            outcome=Outcome.SUCCEEDED, handler="billing.note", queue="events.billing",
            task_id="t-1", service="billing", event=placed(), attempt=1,
            started_at=1.0, finished_at=2.0, redelivered=True,
        )
    )
    assert value(registry, "celery_events_redeliveries_total", service="billing",
                 handler="billing.note") == 1
    # The handler was not called in that run: no duration, no lag
    assert value(registry, "celery_events_handler_duration_seconds_count", service="billing",
                 handler="billing.note") is None


def test_no_label_holds_an_event_correlation_or_task_id(
    bus: EventBus, registry: CollectorRegistry
) -> None:
    bus.subscribe("order.placed", name="note")(lambda event: None)
    result = bus.publish("order.placed", {"order_id": 1})
    [run] = HandlerRunner().run(bus, placed())
    ids = {result.event.id, result.event.correlation_id, run.task_id, run.event_id}
    ids |= {d.task_id for d in result.deliveries}
    labels = {v for _, pairs in samples(registry) for _, v in pairs}
    assert labels and not labels & ids


def test_two_buses_in_one_process_share_the_series(registry: CollectorRegistry) -> None:
    first, second = Metrics(registry=registry), Metrics(registry=registry)
    for metrics in (first, second):
        metrics.on_settled(
            Settled(Outcome.IGNORED, "billing.note", "events.billing", "t", "billing", None, 1,
                    1.0, 1.0)
        )
    assert value(registry, "celery_events_deliveries_total", service="billing",
                 handler="billing.note", outcome="ignored") == 2


def test_metrics_without_prometheus_client_is_refused_when_the_bus_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigurationError, match=r"metrics=True needs prometheus_client.*\[prometheus\]"):
        EventBus(Celery("billing", broker="memory://"), service="billing", metrics=True)


# -- the queue gauges ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def backlog() -> list[ServiceStatus]:
    return [
        ServiceStatus("mailer", 2, 1.0, (QueueStatus("events.mailer", 7, 1, 42.5),), None),
        ServiceStatus("orders", 1, 1.0, (QueueStatus("events.orders", 0, 0, None),), None),
    ]


def test_queue_gauges_are_read_at_scrape_time_and_reused_for_a_few_seconds(
    registry: CollectorRegistry,
) -> None:
    readings: list[float] = []
    clock = Clock()

    def read() -> list[ServiceStatus]:
        readings.append(clock.now)
        return backlog()

    registry.register(QueueStatusCollector(None, ttl=5.0, read=read, clock=clock))
    assert value(registry, "celery_events_queue_waiting", service="mailer") == 7
    assert value(registry, "celery_events_queue_in_flight", service="mailer") == 1
    assert value(registry, "celery_events_queue_oldest_waiting_seconds", service="mailer") == 42.5
    assert value(registry, "celery_events_queue_oldest_waiting_seconds", service="orders") == 0
    clock.now += 4.5
    samples(registry)
    assert readings == [100.0]  # four scrapes, one reading
    clock.now += 1.0
    samples(registry)
    assert readings == [100.0, 105.5]


def test_a_failed_reading_leaves_the_gauges_out_and_is_counted(
    registry: CollectorRegistry,
) -> None:
    clock = Clock()
    answers: list[Exception | list[ServiceStatus]] = [ConnectionError("redis is away"), backlog()]

    def read() -> list[ServiceStatus]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    registry.register(QueueStatusCollector(None, read=read, clock=clock))
    found = samples(registry)
    assert not [name for name, _ in found if name.startswith("celery_events_queue_")]
    assert value(registry, "celery_events_status_errors_total") == 1
    clock.now += 10
    assert value(registry, "celery_events_queue_waiting", service="mailer") == 7
    assert value(registry, "celery_events_status_errors_total") == 1


def test_a_backend_that_cannot_read_its_queues_exports_no_gauges(
    bus: EventBus, registry: CollectorRegistry
) -> None:
    registry.register(QueueStatusCollector(bus))
    found = samples(registry)
    assert not [name for name, _ in found if name.startswith("celery_events_queue_")]
    assert value(registry, "celery_events_status_errors_total") == 0


# -- the worker's multiprocess directory ---------------------------------------------------


@pytest.fixture
def multiprocess_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Puts prometheus_client's value class and the environment back after the test."""
    from prometheus_client import values

    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)


def test_a_worker_empties_the_multiprocess_directory_it_is_given(
    multiprocess_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prometheus_client import values

    from celery_events.observability.metrics import _multiprocess_directory

    # Given the files an earlier run of the worker left in the directory
    (tmp_path / "counter_123.db").write_bytes(b"stale")
    (tmp_path / "notes.txt").write_text("the operator's")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert _multiprocess_directory() == str(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    # and the series made from now on write there (prometheus_client's multiprocess mode)
    assert values.ValueClass.__name__ == "MmapedValue"


def test_a_worker_given_no_multiprocess_directory_makes_a_private_one(
    multiprocess_env: None,
) -> None:
    import os

    from celery_events.observability.metrics import _multiprocess_directory

    directory = _multiprocess_directory()
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == directory
    assert Path(directory).is_dir() and "celery-events-metrics-" in directory
    os.rmdir(directory)


# -- the dashboard --------------------------------------------------------------------------


def exported(registry: CollectorRegistry) -> set[str]:
    """Every sample name the module exports, with one of each series made."""
    metrics = Metrics(registry=registry)
    metrics.on_settled(
        Settled(Outcome.DEAD_LETTERED, "billing.note", "events.billing", "t", "billing",
                placed(), 1, 1.0, 2.0, handler_started_at=1.0, handler_finished_at=2.0,
                reason="rejected", redelivered=True)
    )
    metrics._s.published.labels("billing", "order.placed").inc()
    metrics._s.deferred.labels("billing", "order.placed").inc()
    registry.register(QueueStatusCollector(None, read=backlog))
    return {name for name, _ in samples(registry)}


def test_the_grafana_dashboard_loads_and_names_only_exported_series(
    registry: CollectorRegistry,
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    names = exported(registry)

    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    [variable] = dashboard["templating"]["list"]
    assert variable["name"] == "service"
    titles = " / ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("published", "outcome", "duration", "lag", "dead letters", "queue depth",
                  "oldest"):
        assert topic in titles
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert expressions
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
    for expr in expressions:
        used = set(re.findall(r"\bcelery_events_[a-z_]+", expr))
        assert used and used <= names, f"{expr} names {used - names}"
    used_everywhere = {n for e in expressions for n in re.findall(r"\bcelery_events_[a-z_]+", e)}
    assert {"celery_events_published_total", "celery_events_deliveries_total",
            "celery_events_handler_duration_seconds_bucket",
            "celery_events_delivery_lag_seconds_bucket", "celery_events_dead_letters_total",
            "celery_events_queue_waiting", "celery_events_queue_oldest_waiting_seconds"
            } <= used_everywhere
