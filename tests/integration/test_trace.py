"""`celery -A <service> eventbus trace`: the path of an event across three services with real
`celery worker` processes on a real Redis, read from the trace records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from celery_events import EventBus
from celery_events.observability.tree import build, find, to_json

from ..harness import ROOT, Worker, wait_until

USERS = "tests.services.trace_users"
ORDERS = "tests.services.trace_orders"
BILLING = "tests.services.trace_billing"


def eventbus(*args: str, app: str = USERS) -> Any:
    """Run `celery -A app eventbus ARGS` and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", app, "eventbus", *args],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=60,
    )


@pytest.fixture
def users(redis_url: str) -> Iterator[EventBus]:
    bus = EventBus(Celery("trace_users", broker=redis_url), service="trace_users",
                   trace_records=True)
    yield bus
    bus.close()


def tree(bus: EventBus, event_id: str) -> dict[str, Any] | None:
    store = bus.backend.state.traces()
    correlation = store.correlation_of(event_id)
    node = None if correlation is None else find(build(store.load(correlation)), event_id)
    return None if node is None else to_json(node)


def settled(bus: EventBus, event_id: str) -> dict[str, Any] | None:
    """The tree once every delivery of the chain reached its end."""
    found = tree(bus, event_id)
    if found is None:
        return None
    deliveries = {d["handler"]: d for d in found["deliveries"]}
    cart = deliveries.get("trace_orders.open_cart")
    if cart is None or cart["state"] != "succeeded" or not cart["caused"]:
        return None
    if deliveries["trace_orders.fraud_check"]["state"] != "dead-lettered":
        return None
    [charge] = cart["caused"][0]["deliveries"] or [None]
    return found if charge is not None and charge["state"] == "succeeded" else None


def test_trace_shows_a_three_service_chain_with_states_workers_and_timings(
    users: EventBus, start_worker: Callable[..., Worker], redis_client: redis.Redis
) -> None:
    # Given billing and orders workers, each named, with trace records on
    start_worker(BILLING, args=["-n", "billing@%h"])
    start_worker(ORDERS, args=["-n", "orders@%h"])

    # When users publishes user.registered, orders' handler publishes order.created, and
    # billing's charge fails once before it succeeds, while the fraud check dead-letters
    event_id = users.publish("user.registered", {"user_id": 4}).event.id
    found = wait_until(lambda: settled(users, event_id), timeout=30, what="the chain to settle")

    # Then `eventbus trace` (a real command, from the first service's app) shows it all
    shown = eventbus("trace", event_id)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"user.registered {event_id} from trace_users"
    text = shown.stdout
    assert "trace_orders trace_orders.open_cart: succeeded, on orders@" in text
    assert "trace_orders trace_orders.fraud_check: dead-lettered: rejected" in text
    assert "published order.created " in text and "from trace_orders" in text
    assert ("trace_billing trace_billing.charge: succeeded, retried 1 time (last error"
            " TimeoutError), on billing@") in text
    assert "waited " in text and "ran " in text
    assert all(ord(ch) < 128 or ch in "─│├└" for ch in text)  # no colour codes

    # And --json is the same tree, with timings
    as_json = eventbus("trace", event_id, "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data == json.loads(json.dumps(found))
    deliveries = {d["handler"]: d for d in data["deliveries"]}
    cart = deliveries["trace_orders.open_cart"]
    assert cart["worker"].startswith("orders@") and cart["queue_wait_seconds"] >= 0
    [created] = cart["caused"]
    assert (created["name"], created["causation_id"], created["correlation_id"]) == (
        "order.created", event_id, event_id
    )
    [charge] = created["deliveries"]
    assert (charge["state"], charge["retries"], charge["last_error"]) == (
        "succeeded", 1, "TimeoutError"
    )
    assert [r["state"] for r in charge["runs"]] == ["retried", "succeeded"]
    assert charge["worker"].startswith("billing@") and charge["handler_seconds"] >= 0
    fraud = deliveries["trace_orders.fraud_check"]
    assert (fraud["state"], fraud["reason"]) == ("dead-lettered", "rejected")

    # And --format mermaid is a flowchart of the same tree
    mermaid = eventbus("trace", event_id, "--format", "mermaid")
    assert mermaid.returncode == 0, mermaid.stderr
    assert mermaid.stdout.startswith("flowchart TD\n")
    assert mermaid.stdout.count("-->") == 4
    assert "order.created<br/>" + created["id"] in mermaid.stdout

    # And --correlation shows the whole conversation, from the second event's service too
    conversation = eventbus("trace", "--correlation", event_id, "--json", app=BILLING)
    assert conversation.returncode == 0, conversation.stderr
    [root] = json.loads(conversation.stdout)
    assert root["id"] == event_id

    # And the tree of the second event is its own subtree
    second = eventbus("trace", created["id"], "--json", app=ORDERS)
    assert json.loads(second.stdout)["deliveries"][0]["handler"] == "trace_billing.charge"

    # And the records are small: one hash per conversation, no event data
    key = f"celery_events:trace:{event_id}"
    fields = {k.decode(): v.decode() for k, v in redis_client.hgetall(key).items()}
    assert not any("user_id" in v or "order_id" in v for v in fields.values())
    events = [f for f in fields if f.startswith("e:")]
    runs = [f for f in fields if f.startswith("r:")]
    assert (len(events), len(runs)) == (2, 4)  # open_cart, fraud_check, charge twice
    event_bytes = max(redis_client.hstrlen(key, f) for f in events)
    run_bytes = max(redis_client.hstrlen(key, f) for f in runs)
    usage = redis_client.memory_usage(key)
    index = redis_client.memory_usage(f"celery_events:trace-event:{event_id}")
    print(f"\nevent record {event_bytes} B, run record {run_bytes} B (HSTRLEN); hash of 2"
          f" events, 3 deliveries and 4 runs {usage} B, an event's index key {index} B"
          " (MEMORY USAGE)")
    assert event_bytes < 600 and run_bytes < 400 and usage is not None and usage < 4096
    ttl = redis_client.pttl(key)
    assert 0 < ttl <= users.settings.trace_ttl * 1000


def test_trace_of_an_unknown_event_says_why_and_exits_1(redis_url: str) -> None:
    missing = eventbus("trace", "no-such-event")
    assert missing.returncode == 1
    assert "No trace record of event no-such-event" in missing.stderr
    assert "trace_ttl" in missing.stderr and "trace_records=True" in missing.stderr


def test_trace_exits_3_when_the_store_cannot_be_reached(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELERY_EVENTS_TEST_BROKER", "redis://127.0.0.1:1/0")
    away = eventbus("trace", "some-event")
    assert away.returncode == 3, away.stderr
    assert "Could not reach Redis" in away.stderr


def test_records_expire_trace_ttl_after_their_last_write(
    redis_url: str, redis_client: redis.Redis
) -> None:
    bus = EventBus(Celery("trace_users", broker=redis_url), service="trace_users",
                   trace_records=True, trace_ttl=0.5)
    try:
        event_id = bus.publish("user.registered", {"user_id": 5}).event.id
        key = f"celery_events:trace:{event_id}"
        assert 0 < redis_client.pttl(key) <= 500
        assert 0 < redis_client.pttl(f"celery_events:trace-event:{event_id}") <= 500
        wait_until(lambda: not redis_client.exists(key), timeout=5, what="the records to expire")
        assert redis_client.get(f"celery_events:trace-event:{event_id}") is None
        assert eventbus("trace", event_id).returncode == 1
    finally:
        bus.close()
