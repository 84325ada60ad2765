"""`celery -A <service> eventbus ...`, run as the real command against a real Redis."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import redis

from ..harness import ROOT, wait_until
from .conftest import effects

SHOP = "tests.services.shop"
ORDERS = "tests.services.orders"
MAILER = "tests.services.mailer"
BILLING = "tests.services.billing"
RELEASE_KEY = "test:billing:release"  # tests.services.billing.RELEASE_KEY


def eventbus(*args: str, app: str = SHOP, env: dict[str, str] | None = None) -> Any:
    """Run `celery -A app eventbus ARGS` and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", app, "eventbus", *args],
        cwd=ROOT,
        env=dict(os.environ, **(env or {})),
        capture_output=True,
        text=True,
        timeout=60,
    )


def register(*apps: str) -> None:
    for app in apps:
        done = eventbus("register", app=app)
        assert done.returncode == 0, done.stderr


def test_register_and_subscriptions_list_every_service(redis_url: str) -> None:
    # Given two services that recorded their subscriptions at deploy time
    recorded = eventbus("register", app=ORDERS)
    assert recorded.returncode == 0, recorded.stderr
    assert "Recorded 2 subscription(s) of service 'orders'." in recorded.stdout
    register(MAILER)

    # When an operator lists subscriptions from any service's app
    table = eventbus("subscriptions")
    as_json = eventbus("subscriptions", "--json")
    only_mailer = eventbus("subscriptions", "--service", "mailer", "--json")

    # Then every subscription is shown, as a table and as JSON
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["PATTERN", "SERVICE", "HANDLER", "QUEUE", "REGISTERED"]
    assert any(line.split()[:4] == ["user.*", "orders", "orders.audit_users", "events.orders"]
               for line in lines)
    rows = json.loads(as_json.stdout)
    assert {(r["pattern"], r["service"], r["handler"], r["queue"]) for r in rows} == {
        ("user.registered", "orders", "orders.welcome_order", "events.orders"),
        ("user.*", "orders", "orders.audit_users", "events.orders"),
        ("user.registered", "mailer", "mailer.send_welcome", "events.mailer"),
        ("order.#", "mailer", "mailer.order_mail", "events.mailer"),
    }
    assert all(r["registered_at"] > 0 for r in rows)
    assert {r["service"] for r in json.loads(only_mailer.stdout)} == {"mailer"}

    # And a filter that matches nothing exits with 1
    nothing = eventbus("subscriptions", "--service", "nobody")
    assert nothing.returncode == 1 and "No subscriptions of service 'nobody'" in nothing.stderr


def test_publish_prints_the_deliveries_that_workers_then_handle(
    redis_url: str, redis_client: redis.Redis, start_worker: Callable[..., Any]
) -> None:
    # Given a running subscriber
    start_worker(ORDERS)

    # When an operator publishes from the shell
    done = eventbus("publish", "user.registered", "--data", '{"user_id": 7}', "--json")

    # Then the deliveries are printed and handled
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["event"]["type"] == "user.registered"
    assert printed["event"]["source"] == "shop" and printed["event"]["data"] == {"user_id": 7}
    assert sorted(d["handler"] for d in printed["deliveries"]) == [
        "orders.audit_users", "orders.welcome_order",
    ]
    wait_until(lambda: len(effects(redis_client)) >= 2)
    assert {(e["handler"], e["event_id"]) for e in effects(redis_client)} == {
        (d["handler"], printed["event"]["id"]) for d in printed["deliveries"]
    }

    # And the table form names each delivery's task id
    table = eventbus("publish", "user.deleted", "--data", '{"user_id": 8}')
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("Published user.deleted (event ")
    assert "orders.audit_users" in table.stdout and "events.orders" in table.stdout


def test_publish_without_subscriber_or_with_bad_input(redis_url: str) -> None:
    nobody = eventbus("publish", "payment.failed", "--data", '{"id": 1}')
    assert nobody.returncode == 1
    assert "No subscription matches 'payment.failed'; nothing was sent." in nobody.stderr

    bad_json = eventbus("publish", "user.registered", "--data", "{user_id: 7}")
    assert bad_json.returncode == 2
    assert "--data '{user_id: 7}' is not JSON" in bad_json.stderr

    bad_data = eventbus("publish", "user.registered", "--data", "[1, 2]")
    assert bad_data.returncode == 2 and "Error:" in bad_data.stderr

    bad_name = eventbus("publish", "User Registered")
    assert bad_name.returncode == 2
    assert "'User Registered' is not a valid event name" in bad_name.stderr
    for done in (nobody, bad_json, bad_data, bad_name):
        assert "Traceback" not in done.stderr


def test_catalog_shows_who_publishes_and_who_subscribes(redis_url: str) -> None:
    # Given subscribers, and a publisher that published two names
    register(ORDERS, MAILER, BILLING)
    for name in ("user.registered", "payment.failed"):
        eventbus("publish", name)

    # When an operator asks for the catalog
    table = eventbus("catalog")
    as_json = json.loads(eventbus("catalog", "--format", "json").stdout)
    mermaid = eventbus("catalog", "--format", "mermaid").stdout
    dot = eventbus("catalog", "--format", "dot").stdout

    # Then published names list their publisher and every matching handler
    assert table.returncode == 0, table.stderr
    events = {e["name"]: e for e in as_json["events"]}
    registered = events["user.registered"]
    assert registered["publishers"] == ["shop"] and registered["published"]
    assert sorted(s["handler"] for s in registered["subscribers"]) == [
        "mailer.send_welcome", "orders.audit_users", "orders.welcome_order",
    ]
    assert events["payment.failed"]["subscribers"] == []
    # and subscriptions nobody published yet are listed under their pattern
    assert events["order.#"] == {
        "name": "order.#", "published": False, "publishers": [],
        "subscribers": [{"service": "mailer", "handler": "mailer.order_mail",
                         "pattern": "order.#", "queue": "events.mailer"}],
    }
    assert not events["order.created"]["published"]
    assert as_json["services"] == ["billing", "mailer", "orders", "shop"]
    assert "(not published yet)" in table.stdout and "(no subscriber)" in table.stdout

    # And the graph has services as nodes and events as edges
    assert mermaid.startswith("flowchart LR\n")
    assert '"user.registered"|' in mermaid and '["orders"]' in mermaid
    assert '"shop" -> "orders" [label="user.registered"];' in dot
    assert '"shop" -> "mailer" [label="user.registered"];' in dot
    assert '"shop" -> "_nobody" [label="payment.failed", style=dashed];' in dot

    # And an unknown format is a usage error
    bad = eventbus("catalog", "--format", "svg")
    assert bad.returncode == 2 and "Invalid value for '--format'" in bad.stderr


def test_status_shows_waiting_and_in_flight_deliveries_and_their_age(
    redis_url: str, redis_client: redis.Redis, start_worker: Callable[..., Any]
) -> None:
    # Given billing's worker busy with one delivery, and orders not running at all
    register(ORDERS)
    start_worker(BILLING)
    eventbus("publish", "order.shipped", "--data", '{"order_id": 1}')
    for user_id in range(3):
        eventbus("publish", "user.registered", "--data", json.dumps({"user_id": user_id}))

    def status() -> dict[str, dict[str, Any]]:
        done = eventbus("status", "--json")
        assert done.returncode == 0, done.stderr
        return {s["service"]: s for s in json.loads(done.stdout)["services"]}

    busy = wait_until(lambda: (s := status()) and s["billing"]["in_flight"] == 1 and s,
                      what="billing's delivery in flight")

    # Then status shows what waits, what is in flight, and how old the oldest waiting is
    assert busy["billing"]["waiting"] == 0
    assert busy["billing"]["oldest_waiting_seconds"] is None
    assert busy["orders"]["waiting"] == 6  # 3 events x 2 handlers
    assert busy["orders"]["in_flight"] == 0
    assert 0 <= busy["orders"]["oldest_waiting_seconds"] < 60
    assert busy["orders"]["queues"] == [{
        "queue": "events.orders", "waiting": 6, "in_flight": 0,
        "oldest_waiting_seconds": busy["orders"]["oldest_waiting_seconds"],
    }]
    table = eventbus("status").stdout.splitlines()
    assert table[0].split() == [
        "SERVICE", "QUEUES", "WAITING", "IN", "FLIGHT", "DEAD", "LETTERS", "OLDEST", "WAITING",
    ]
    assert table[2].split()[:4] == ["orders", "events.orders", "6", "0"]

    # And when the handler finishes, nothing is in flight any more
    redis_client.rpush(RELEASE_KEY, "go")
    wait_until(lambda: status()["billing"]["in_flight"] == 0, what="billing idle")


def test_a_status_that_survives_an_item_it_cannot_read(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # Given a queue whose oldest item is not a message at all
    register(ORDERS)
    redis_client.rpush("events.orders", b"\xff not json")
    eventbus("publish", "user.registered")

    # Then it is counted as waiting, and the age comes from the readable ones
    done = eventbus("status", "--json")
    assert done.returncode == 0, done.stderr
    (orders,) = json.loads(done.stdout)["services"]
    assert orders["waiting"] == 3
    assert orders["oldest_waiting_seconds"] is not None


def test_status_names_the_backend_and_what_it_guarantees(redis_url: str) -> None:
    # Given a service on a Redis broker
    register(ORDERS)

    # Then status shows the backend and each capability, as a table and as JSON
    table = eventbus("status").stdout
    assert "Backend redis: redis://127.0.0.1:" in table
    assert re.search(r"atomic_fanout +yes", table) and re.search(r"native_delivery_limit +no", table)
    done = eventbus("status", "--json")
    assert done.returncode == 0, done.stderr
    backend = json.loads(done.stdout)["backend"]
    assert backend["name"] == "redis"
    assert backend["capabilities"]["lost_delivery_ledger"] is True
    assert backend["capabilities"]["native_delivery_limit"] is False


def test_errors_are_one_clear_line_with_a_documented_exit_code(redis_url: str) -> None:
    # An unreachable broker: exit 3, the broker named with its password hidden
    down = eventbus("status", env={"CELERY_EVENTS_TEST_BROKER": "redis://:s3cret@127.0.0.1:1/0"})
    assert down.returncode == 3
    assert "Could not read the subscription registry" in down.stderr
    assert "The app's broker is redis://:***@127.0.0.1:1/0." in down.stderr
    assert "s3cret" not in down.stderr

    # An app without a bus: exit 2
    no_bus = eventbus("status", app="tests.services._no_bus")
    assert no_bus.returncode == 2
    assert "has no event bus" in no_bus.stderr and "-A" in no_bus.stderr

    # A module that does not exist: Celery's own usage error, exit 2
    missing = eventbus("status", app="tests.services.nonexistent")
    assert missing.returncode == 2
    assert "The module tests.services.nonexistent was not found" in missing.stderr

    for done in (down, no_bus, missing):
        assert "Traceback" not in done.stderr


def test_a_bus_created_in_a_module_the_app_includes_is_found(redis_url: str) -> None:
    done = eventbus("register", app="tests.services.late_bus")
    assert done.returncode == 0, done.stderr
    assert "Recorded 1 subscription(s) of service 'late'." in done.stdout


def test_help_lists_every_command(redis_url: str) -> None:
    done = eventbus("--help")
    assert done.returncode == 0
    for command in ("subscriptions", "catalog", "publish", "status", "register"):
        assert command in done.stdout


def test_dead_letters_can_be_listed_shown_replayed_and_purged(
    redis_url: str, redis_client: redis.Redis, start_worker: Callable[..., Any]
) -> None:
    # Given billing's handlers gave up on three deliveries
    start_worker(BILLING)
    for order_id in (1, 2):
        eventbus("publish", "order.cancelled", "--data", json.dumps({"order_id": order_id}))
    eventbus("publish", "payment.requested", "--data", '{"failures": 10}')

    def listed(*filters: str) -> list[dict[str, Any]]:
        done = eventbus("dead-letters", "list", "--json", *filters)
        assert done.returncode in (0, 1), done.stderr
        return list(json.loads(done.stdout))

    wait_until(lambda: len(listed()) == 3, timeout=30, what="three dead letters")

    # When an operator lists them, with and without filters
    table = eventbus("dead-letters", "list")
    refunds = listed("--handler", "billing.refund")
    payments = listed("--event", "payment.requested")

    # Then each shows its handler, event, reason, attempts and error
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == [
        "ID", "HANDLER", "EVENT", "REASON", "ATTEMPTS", "LAST", "FAILED", "ERROR",
    ]
    assert "RuntimeError: order 2 was never charged" in table.stdout
    assert sorted(lt["envelope"]["data"]["order_id"] for lt in refunds) == [1, 2]
    (payment,) = payments
    assert payment["reason"] == "retries_exhausted" and payment["attempts"] == 4
    assert payment["error_type"] == "ConnectionError"
    assert listed("--service", "orders") == [] and listed("--limit", "1")[0]["id"]
    assert eventbus("dead-letters", "list", "--event", "nope.never").returncode == 1

    # And one can be shown whole, with its envelope and traceback
    shown = eventbus("dead-letters", "show", payment["id"])
    assert shown.returncode == 0, shown.stderr
    assert "handler       billing.collect" in shown.stdout
    assert '"failures": 10' in shown.stdout
    assert "ConnectionError: payment gateway busy (attempt 4)" in shown.stdout
    assert json.loads(eventbus("dead-letters", "show", payment["id"], "--json").stdout) == payment
    missing = eventbus("dead-letters", "show", "no-such-id")
    assert missing.returncode == 1 and "No service has a dead letter 'no-such-id'" in missing.stderr

    # When the payment is replayed (the gateway is back: no more failures)
    redis_client.set(f"test:billing:attempts:billing.collect:{payment['event_id']}", 100)
    replayed = eventbus("dead-letters", "replay", payment["id"])

    # Then it is delivered again, handled, and leaves the dead letters
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.startswith("Replayed 1 dead letter(s):")
    wait_until(lambda: any(e["handler"] == "billing.collect" for e in effects(redis_client)))
    (handled,) = [e for e in effects(redis_client) if e["handler"] == "billing.collect"]
    assert handled["event_id"] == payment["event_id"]
    assert listed("--event", "payment.requested") == []

    # And the refunds are purged by filter
    assert eventbus("dead-letters", "purge").returncode == 2  # nothing named: refused
    purged = eventbus("dead-letters", "purge", "--handler", "billing.refund", "--json")
    assert purged.returncode == 0, purged.stderr
    assert json.loads(purged.stdout)["purged"] == 2
    assert listed() == []
    assert eventbus("dead-letters", "purge", "--all").returncode == 1
    assert eventbus("dead-letters", "replay", "--all").returncode == 1


def one_line_error(done: Any) -> str:
    """The single `Error: ...` line a usage error prints, with no traceback around it."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    return str(lines[0])


def test_publish_data_too_deep_or_not_an_object_exits_2_and_sends_nothing(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # Given a subscriber that every user.registered would reach
    register(ORDERS)

    # When an operator publishes data nested 500 levels (about 3 KB, accepted before and then
    # fatal to every prefork subscriber), 10,000 levels (a RecursionError traceback before),
    # JSON that is not an object, or an object naming a key twice
    deep = '{"a":' * 500 + "{}" + "}" * 500
    deeper = '{"a":' * 10_000 + "{}" + "}" * 10_000
    too_deep = eventbus("publish", "user.registered", "--data", deep)
    far_too_deep = eventbus("publish", "user.registered", "--data", deeper)
    lists = eventbus("publish", "user.registered", "--data", "[" * 500 + "]" * 500)
    not_objects = [eventbus("publish", "user.registered", "--data", d) for d in ("[1]", '"x"', "7", "null")]
    twice = eventbus("publish", "user.registered", "--data", '{"user_id": 1, "user_id": 2}')

    # Then each exits 2 with one line that says what is wrong, and nothing is sent
    for done in (too_deep, far_too_deep, lists, *not_objects, twice):
        assert done.returncode == 2, done.stderr
    assert "more than 64 levels deep" in one_line_error(too_deep)
    assert "max_event_depth" in one_line_error(too_deep)
    assert "nests far deeper than the bus takes" in one_line_error(far_too_deep)
    assert len(one_line_error(far_too_deep)) < 300
    assert "must be a JSON object" in one_line_error(lists)
    for done, kind in zip(not_objects, ["an array", "a string", "a number", "null"], strict=True):
        assert "--data must be a JSON object such as" in one_line_error(done)
        assert f"not {kind}" in done.stderr
    assert "the key 'user_id' appears twice" in one_line_error(twice)
    assert redis_client.llen("events.orders") == 0

    # And data at the limit still goes out
    ok = eventbus("publish", "user.registered", "--data", '{"a":' * 63 + "{}" + "}" * 63)
    assert ok.returncode == 0, ok.stderr
    assert redis_client.llen("events.orders") == 2


def test_catalog_takes_json_like_every_other_command(redis_url: str) -> None:
    # Given a registered subscriber and one published name
    register(ORDERS)
    eventbus("publish", "user.registered")

    # When an operator asks for the catalog with --json, as with every other command
    as_json = eventbus("catalog", "--json")
    as_format = eventbus("catalog", "--format", "json")
    both = eventbus("catalog", "--json", "--format", "json")

    # Then it is the same document as --format json
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == json.loads(as_format.stdout) == json.loads(both.stdout)
    assert "user.registered" in {e["name"] for e in json.loads(as_json.stdout)["events"]}

    # And --json with another format is a usage error naming both
    clash = eventbus("catalog", "--json", "--format", "mermaid")
    assert clash.returncode == 2
    assert "--json and --format mermaid ask for two formats" in one_line_error(clash)


def test_a_malformed_broker_url_is_a_usage_error_not_a_traceback(redis_url: str) -> None:
    # Given an app whose broker URL has a port that is not a number
    env = {"CELERY_EVENTS_TEST_BROKER": "redis://127.0.0.1:notaport/0"}

    # When an operator runs commands against it, Then each says what to fix, with exit 2
    for args in (("status",), ("catalog",), ("subscriptions",), ("publish", "user.registered")):
        done = eventbus(*args, env=env)
        assert done.returncode == 2, (args, done.stderr)
        assert "The Redis URL with scheme 'redis' cannot be used" in one_line_error(done)
        assert "notaport" in done.stderr
