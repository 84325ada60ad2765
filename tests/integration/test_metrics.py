"""The worker's metrics, scraped over HTTP: a real `celery worker` (prefork with two pool
processes, solo, and threads) with metrics on, a real Redis, a real GET of ``/metrics`` after
publishes, successes, a retry, a dead letter and a duplicate; counts are summed over the pool
processes, and the queue gauges show a service that has no worker."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Callable, Iterator

import pytest
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from celery_events import EventBus

from ..harness import Worker, wait_until

METERED = "tests.services.metered"
METER_KEY = "test:meter"  # where the service records each run

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> tuple[str, Samples]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def runs(client: redis.Redis) -> list[dict[str, str]]:
    return [json.loads(raw) for raw in client.lrange(METER_KEY, 0, -1)]


@pytest.fixture
def publisher(redis_url: str) -> Iterator[EventBus]:
    bus = EventBus(Celery("shop", broker=redis_url), service="shop")
    yield bus
    bus.close()


@pytest.fixture
def absent(redis_url: str) -> Iterator[EventBus]:
    """A service that subscribes to ``meter.ok`` and has no worker running."""
    bus = EventBus(Celery("absent", broker=redis_url), service="absent")
    bus.subscribe("meter.ok", name="tally")(lambda event: None)
    bus.register()
    yield bus
    bus.close()


@pytest.mark.parametrize(
    "pool",
    [["-P", "prefork", "-c", "2"], ["-P", "solo"], ["-P", "threads", "-c", "2"]],
    ids=["prefork", "solo", "threads"],
)
def test_a_scrape_of_the_worker_counts_every_outcome_across_its_pool_processes(
    pool: list[str],
    start_worker: Callable[..., Worker],
    publisher: EventBus,
    absent: EventBus,
    redis_client: redis.Redis,
) -> None:
    port = free_port()
    start_worker(METERED, env={"CELERY_EVENTS_TEST_METRICS_PORT": str(port)}, args=pool)

    # Given three events that succeed, one that fails once, one that is rejected, and the
    # first of them published again (a duplicate)
    published = [publisher.publish("meter.ok", {"n": n, "hold": 0.3}) for n in range(3)]
    flaky = publisher.publish("meter.flaky", {})
    doomed = publisher.publish("meter.doomed", {})
    again = publisher.publish_event(published[0].event)
    wait_until(
        lambda: sum(r["what"] == "ok" for r in runs(redis_client)) == 3 + 3 + 1
        and any(r["what"] == "rejected" for r in runs(redis_client)),
        timeout=60,
    )
    every = {
        ("metered.count", "succeeded"): 3,
        ("metered.count", "duplicate_skipped"): 1,
        ("metered.follow", "succeeded"): 3,
        ("metered.flaky", "retried"): 1,
        ("metered.flaky", "succeeded"): 1,
        ("metered.doomed", "dead_lettered"): 1,
    }

    def counted() -> Samples | None:
        _, samples = scrape(port)
        found = {
            key: value(samples, "celery_events_deliveries_total", service="metered",
                       handler=key[0], outcome=key[1])
            for key in every
        }
        return samples if found == every else None

    # When Prometheus scrapes the worker
    wait_until(lambda: counted() is not None, timeout=30, what="every run counted")
    text, samples = scrape(port)

    # Then every run is counted once, summed over the pool processes
    pids = {r["pid"] for r in runs(redis_client)}
    assert len(pids) == (2 if "prefork" in pool else 1)
    assert value(samples, "celery_events_published_total", service="metered",
                 event="meter.followed") == 3
    assert value(samples, "celery_events_dead_letters_total", service="metered",
                 handler="metered.doomed", reason="rejected") == 1
    # the handlers that ran were timed, and their first runs' lag measured
    assert value(samples, "celery_events_handler_duration_seconds_count", service="metered",
                 handler="metered.flaky") == 2
    assert value(samples, "celery_events_delivery_lag_seconds_count", service="metered",
                 handler="metered.flaky") == 1
    assert value(samples, "celery_events_delivery_lag_seconds_count", service="metered",
                 handler="metered.count") == 3
    lag_sum = value(samples, "celery_events_delivery_lag_seconds_sum", service="metered",
                    handler="metered.count")
    assert lag_sum is not None and 0 < lag_sum < 60
    # the service with no worker has its four deliveries waiting, the oldest for a while
    assert value(samples, "celery_events_queue_waiting", service="absent") == 4
    oldest = value(samples, "celery_events_queue_oldest_waiting_seconds", service="absent")
    assert oldest is not None and oldest > 0
    assert value(samples, "celery_events_queue_waiting", service="metered") == 0
    assert value(samples, "celery_events_status_errors_total") == 0
    # and no label holds an id
    ids = {r.event.id for r in [*published, flaky, doomed, again]} | {
        d.task_id for r in [*published, flaky, doomed, again] for d in r.deliveries
    } | {r.event.correlation_id for r in published}
    labels = {v for _, pairs in samples for _, v in pairs}
    assert not labels & ids
    assert not any(event_id in text for event_id in ids)


def test_a_worker_whose_metrics_port_is_taken_refuses_to_start(
    start_worker: Callable[..., Worker],
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = start_worker(
            METERED, env={"CELERY_EVENTS_TEST_METRICS_PORT": str(port)}, ready=False
        )
        assert worker.process.wait(timeout=60) == 1
    log = worker.log()
    assert f"the metrics exporter cannot listen on port {port}" in log
    assert " ready." not in log
