"""Tracing across real processes: a publisher (this test) and ``celery worker`` processes
(prefork pool), each exporting its spans with the OpenTelemetry SDK to one JSON-lines file,
read back here: names, kinds, links and attributes across a publish, a retry, a dead letter
and its replay, and beside Celery's own OpenTelemetry instrumentation."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celery_events import EventBus

from ..harness import Worker, wait_until
from ..services._spans import SPANS_FILE, JsonLinesExporter, add_exporter

TRACED = "tests.services.traced"
# This process's spans go to the file of the test that runs (set per test).
_EXPORTER = JsonLinesExporter("")


@pytest.fixture(scope="module", autouse=True)
def sdk() -> None:
    add_exporter(_EXPORTER)


@pytest.fixture
def spans_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "spans.jsonl"
    path.touch()
    _EXPORTER.path = str(path)
    yield path
    _EXPORTER.path = str(tmp_path / "after-the-test.jsonl")


@pytest.fixture
def depot(redis_url: str) -> Iterator[EventBus]:
    bus = EventBus(Celery("depot", broker=redis_url), service="depot", tracing=True)
    yield bus
    bus.close()


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def process_spans(path: Path, event_id: str, count: int) -> list[dict[str, Any]]:
    """Wait for ``count`` process spans of ``event_id``; return them in the order they ran."""

    def found() -> list[dict[str, Any]]:
        spans = [
            s for s in read(path)
            if s["name"].startswith("process ")
            and s["attributes"].get("messaging.message.id") == event_id
        ]
        return spans if len(spans) >= count else []

    spans = wait_until(found, timeout=30, what=f"{count} process spans of {event_id}")
    return sorted(spans, key=lambda s: s["start"])


def send_span(path: Path, event_id: str) -> dict[str, Any]:
    [span] = [
        s for s in read(path)
        if s["name"].startswith("send ")
        and s["attributes"]["messaging.message.id"] == event_id
        and s["attributes"]["messaging.operation.name"] == "publish"
    ]
    return span


def test_a_retried_delivery_has_two_process_spans_linked_to_its_send_span(
    start_worker: Callable[..., Worker], depot: EventBus, spans_file: Path
) -> None:
    # Given a traced subscriber on the default (prefork) pool, exporting to the same file
    worker = start_worker(TRACED, env={SPANS_FILE: str(spans_file)})

    # When the depot publishes an event whose handler fails once
    result = depot.publish("parcel.sent", {"parcel": 7, "fail_times": 1})

    # Then the publisher exported one send span, and the worker's pool process two process
    # spans (attempts 1 and 2), each linked to the send span
    first, second = process_spans(spans_file, result.event.id, 2)
    send = send_span(spans_file, result.event.id)
    assert (send["name"], send["kind"]) == ("send parcel.sent", "PRODUCER")
    assert send["attributes"]["messaging.system"] == "redis"
    assert send["attributes"]["messaging.batch.message_count"] == 1
    assert result.event.extensions["traceparent"].split("-")[2] == send["span_id"]
    for span, attempt, outcome, status in (
        (first, 1, "retried", "ERROR"), (second, 2, "succeeded", "UNSET"),
    ):
        assert (span["name"], span["kind"], span["status"]) == (
            "process parcel.sent", "CONSUMER", status,
        )
        assert span["links"] == [send["span_id"]] and span["parent_id"] is None
        assert span["trace_id"] != send["trace_id"]  # a new trace per delivery
        attributes = span["attributes"]
        assert attributes["celery_events.attempt"] == attempt
        assert attributes["celery_events.outcome"] == outcome
        assert attributes["messaging.system"] == "redis"
        assert attributes["messaging.destination.name"] == "events.traced"
        assert attributes["messaging.consumer.group.name"] == "traced"
        assert attributes["messaging.message.conversation_id"] == result.event.correlation_id
        assert attributes["celery_events.handler"] == "traced.ship"
        # exported from the pool's child process, not the worker's main process
        assert span["pid"] != worker.process.pid


def test_a_dead_letter_replayed_links_to_the_original_send_span(
    start_worker: Callable[..., Worker],
    depot: EventBus,
    spans_file: Path,
    redis_client: redis.Redis,
    redis_url: str,
) -> None:
    # Given a traced subscriber whose handler is broken, so the delivery gives up
    start_worker(TRACED, env={SPANS_FILE: str(spans_file)})
    redis_client.set("test:broken", 1)
    result = depot.publish("parcel.sent", {"parcel": 8, "broken": True})
    retried, dead = process_spans(spans_file, result.event.id, 2)
    send = send_span(spans_file, result.event.id)
    assert (retried["attributes"]["celery_events.outcome"], dead["attributes"][
        "celery_events.outcome"]) == ("retried", "dead_lettered")
    assert dead["attributes"]["celery_events.dead_letter.reason"] == "retries_exhausted"
    assert dead["status"] == "ERROR"

    # When the handler is fixed and its dead letter replayed (from another process)
    redis_client.delete("test:broken")
    operator = EventBus(Celery("traced", broker=redis_url), service="traced", tracing=True)
    wait_until(operator.dead_letters.count, what="the dead letter")
    [letter] = operator.dead_letters.replay()
    operator.close()

    # Then the replayed run's process span is linked to the ORIGINAL send span: the dead
    # letter's envelope kept the traceparent
    assert letter.envelope is not None
    assert letter.envelope["traceparent"] == result.event.extensions["traceparent"]
    *_, replayed = process_spans(spans_file, result.event.id, 3)
    assert replayed["attributes"]["celery_events.outcome"] == "succeeded"
    assert replayed["links"] == [send["span_id"]]
    # And the replay's own send span (this process) is linked to it too
    [replay] = [
        s for s in read(spans_file)
        if s["name"] == "send parcel.sent"
        and s["attributes"]["messaging.operation.name"] == "replay"
    ]
    assert replay["links"] == [send["span_id"]]


@pytest.fixture
def celery_instrumented() -> Iterator[None]:
    """opentelemetry-instrumentation-celery installed in this (the publishing) process."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().instrument()
    yield
    CeleryInstrumentor().uninstrument()


def test_beside_celerys_instrumentation_each_run_has_one_process_span_inside_its_run_span(
    start_worker: Callable[..., Worker],
    depot: EventBus,
    spans_file: Path,
    celery_instrumented: None,
) -> None:
    # Given a publisher and a traced subscriber with opentelemetry-instrumentation-celery
    # installed too
    start_worker(TRACED, env={SPANS_FILE: str(spans_file), "CELERY_EVENTS_TEST_INSTRUMENT": "1"})

    # When the depot publishes an event whose handler fails once
    result = depot.publish("parcel.sent", {"parcel": 9, "fail_times": 1})

    # Then each run has exactly one process span, the child of Celery's run/{task} span,
    # and still linked to the send span
    runs = process_spans(spans_file, result.event.id, 2)
    send = send_span(spans_file, result.event.id)
    spans = read(spans_file)
    by_id = {s["span_id"]: s for s in spans}
    for span in runs:
        parent = by_id[span["parent_id"]]
        assert (parent["name"], parent["kind"]) == ("run/traced.ship", "CONSUMER")
        assert span["links"] == [send["span_id"]]
    assert len({s["parent_id"] for s in runs}) == 2
    assert len([s for s in spans if s["name"] == "run/traced.ship"]) == 2
    # And Celery's publish span of the delivery is the child of the send span, so the
    # first run is in the publisher's trace: send -> apply_async -> run -> process
    [apply] = [
        s for s in spans if s["name"] == "apply_async/traced.ship" and s["pid"] == send["pid"]
    ]
    assert apply["parent_id"] == send["span_id"]
    first_run = by_id[runs[0]["parent_id"]]
    assert first_run["parent_id"] == apply["span_id"]
    assert runs[0]["trace_id"] == send["trace_id"]
