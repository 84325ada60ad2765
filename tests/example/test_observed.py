"""How the demo exports its spans and reads back what its services observed: the JSON-lines
span files (observability_config.py) and the checks of demo_runner/observed.py, on the real
OpenTelemetry SDK and a real Prometheus endpoint. The demo itself runs them in test_demo.py."""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind
from prometheus_client import CollectorRegistry, Counter, start_http_server

from ..harness import ROOT

sys.path.insert(0, str(ROOT / "example_project"))

from demo_runner import observed  # noqa: E402
from demo_runner.redis_server import free_port  # noqa: E402
from observability_config import JsonLinesExporter, read_spans  # noqa: E402

EVENT_ID = "5f0c1b7e-4d7a-4c61-9d7e-3f1a2b3c4d5e"


def provider(directory: Path, service: str) -> TracerProvider:
    made = TracerProvider(resource=Resource.create({"service.name": service}))
    made.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(directory, service)))
    return made


def publish_and_process(directory: Path, consumer: str) -> None:
    """A send span in "users", and a process span in ``consumer`` linked to it."""
    users = provider(directory, "users").get_tracer("demo")
    with users.start_as_current_span(
        "send user.registered", kind=SpanKind.PRODUCER,
        attributes={"messaging.message.id": EVENT_ID},
    ) as send:
        context = send.get_span_context()
    consumers = provider(directory, consumer).get_tracer("demo")
    with consumers.start_as_current_span(
        "process user.registered", kind=SpanKind.CONSUMER, links=[Link(context)],
        attributes={"messaging.message.id": EVENT_ID},
    ):
        pass


def test_each_process_writes_its_spans_to_a_file_of_its_own(tmp_path: Path) -> None:
    # Given spans made in this process and in a forked one (as a worker's pool process is)
    publish_and_process(tmp_path, "orders")
    child = multiprocessing.get_context("fork").Process(
        target=publish_and_process, args=(tmp_path, "notifications")
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0

    # Then each process wrote its own file, and every span reads back
    assert len(list(tmp_path.glob("users-*.jsonl"))) == 2
    assert len(list(tmp_path.glob("notifications-*.jsonl"))) == 1
    spans = read_spans(tmp_path)
    assert sorted(s["name"] for s in spans) == ["process user.registered"] * 2 + [
        "send user.registered"
    ] * 2
    # And the demo's check finds the send span and the process spans linked to it
    ok, detail = observed.spans_of(tmp_path, EVENT_ID, ["orders"])
    assert ok, detail
    assert detail.endswith("linked process spans in notifications, orders")


def test_the_spans_check_waits_for_every_consumer(tmp_path: Path) -> None:
    publish_and_process(tmp_path, "orders")

    ok, detail = observed.spans_of(tmp_path, EVENT_ID, ["orders", "notifications"])

    assert not ok
    assert "no linked process span in notifications yet" in detail


def test_a_span_still_being_written_is_read_next_time(tmp_path: Path) -> None:
    publish_and_process(tmp_path, "orders")
    [users] = tmp_path.glob("users-*.jsonl")
    with users.open("a") as out:
        out.write('{"name": "send user.del')  # the rest of the line is not written yet

    assert len(read_spans(tmp_path)) == 2


@pytest.fixture
def metrics_url() -> Iterator[tuple[str, Counter]]:
    registry = CollectorRegistry()
    deliveries = Counter(
        "celery_events_deliveries", "Deliveries by outcome", ["service", "handler", "outcome"],
        registry=registry,
    )
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{port}/metrics", deliveries
    finally:
        server.shutdown()
        thread.join(5)


def test_the_metrics_check_reads_the_deliveries_counter_of_a_service(
    metrics_url: tuple[str, Counter],
) -> None:
    url, deliveries = metrics_url
    deliveries.labels("notifications", "notifications.audit_trail", "succeeded").inc(5)
    deliveries.labels("orders", "orders.welcome_order", "succeeded").inc(4)
    expected = {("notifications.audit_trail", "succeeded"): 5}

    assert observed.deliveries_counted(url, "notifications", expected) == (
        True,
        "celery_events_deliveries_total: audit_trail succeeded 5",
    )
    ok, detail = observed.deliveries_counted(url, "orders", expected)
    assert not ok and "audit_trail succeeded 0" in detail


def delivery(handler: str, state: str, caused: list[dict[str, object]] | None = None) -> dict[str, object]:
    return {"handler": handler, "state": state, "caused": caused or []}


def test_the_trace_check_wants_every_delivery_of_the_chain_succeeded() -> None:
    # Given the tree `celery eventbus trace --json` prints: a registration, and the
    # order.created its orders delivery published
    order = {
        "name": "order.created",
        "deliveries": [
            delivery("notifications.order_confirmation", "retrying"),
            delivery("users.remember_welcome_order", "succeeded"),
        ],
        "caused": [],
    }
    tree = {
        "name": "user.registered",
        "deliveries": [
            delivery("notifications.audit_trail", "succeeded"),
            delivery("orders.welcome_order", "succeeded", caused=[order]),
        ],
        "caused": [],
    }
    expected = {
        "user.registered": ["notifications.audit_trail", "orders.welcome_order"],
        "order.created": ["notifications.order_confirmation", "users.remember_welcome_order"],
    }

    # Then a delivery still retrying fails the check, and says which
    assert observed.tree_succeeded(tree, expected) == (
        False,
        "2 events, 4 deliveries; order.created → notifications.order_confirmation: retrying",
    )
    # And once it succeeded, the check passes
    order["deliveries"][0]["state"] = "succeeded"  # type: ignore[index]
    assert observed.tree_succeeded(tree, expected) == (True, "2 events, 4 deliveries")
    # And a delivery missing from the tree is named
    assert observed.tree_succeeded(tree, {"user.registered": ["users.audit"]})[1].endswith(
        "user.registered → users.audit: missing"
    )
