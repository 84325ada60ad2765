"""Three services in separate modules, real workers, a real Redis: the README's promises."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import redis

from celery_events import EventBus, NoSubscribersError, PublishError
from celery_events.backends.redis import liveness

from ..harness import wait_until
from .conftest import effect_counts, effects

ORDERS = "tests.services.orders"
MAILER = "tests.services.mailer"


def test_every_handler_gets_every_matching_event_exactly_once(
    start_worker, publisher: EventBus, redis_client: redis.Redis
) -> None:
    # Given two subscriber services running, orders with an exact and a wildcard handler
    start_worker(ORDERS)
    start_worker(MAILER)

    # When the shop publishes events of several names
    registered = [publisher.publish("user.registered", {"user_id": i}) for i in range(20)]
    deleted = [publisher.publish("user.deleted", {"user_id": i}) for i in range(5)]
    orders = [publisher.publish("order.created", {"order_id": i}) for i in range(5)]
    nobody = publisher.publish("payment.failed", {"id": 1})

    # Then each matching handler gets each event exactly once, in its own delivery
    expected = Counter()
    for result in registered:
        assert sorted(d.handler for d in result.deliveries) == [
            "mailer.send_welcome", "orders.audit_users", "orders.welcome_order",
        ]
        assert len({d.task_id for d in result.deliveries}) == 3
        for handler in ("mailer.send_welcome", "orders.audit_users", "orders.welcome_order"):
            expected[(handler, result.event.id)] = 1
    for result in deleted:
        assert [d.handler for d in result.deliveries] == ["orders.audit_users"]
        expected[("orders.audit_users", result.event.id)] = 1
    for result in orders:
        assert [(d.service, d.queue) for d in result.deliveries] == [("mailer", "events.mailer")]
        expected[("mailer.order_mail", result.event.id)] = 1
    assert nobody.deliveries == ()

    wait_until(lambda: sum(effect_counts(redis_client).values()) >= sum(expected.values()))
    assert effect_counts(redis_client) == expected
    first = next(e for e in effects(redis_client) if e["event_id"] == registered[0].event.id)
    assert first["data"] == {"user_id": 0} and first["source"] == "shop"


def test_a_subscriber_that_was_down_gets_its_events_when_it_starts(
    start_worker, publisher: EventBus, redis_client: redis.Redis
) -> None:
    # Given the mailer registered once and then stopped
    start_worker(MAILER).stop()

    # When events are published while it is down
    sent = [publisher.publish("user.registered", {"user_id": i}) for i in range(5)]
    assert all(len(r.deliveries) == 1 for r in sent)
    assert redis_client.llen("events.mailer") == 5

    # Then it handles them all once it is back
    start_worker(MAILER)
    wait_until(lambda: len(effects(redis_client)) >= 5)
    assert effect_counts(redis_client) == Counter(
        {("mailer.send_welcome", r.event.id): 1 for r in sent}
    )


def test_a_removed_handler_stops_receiving(
    start_worker, publisher: EventBus, redis_client: redis.Redis
) -> None:
    # Given orders ran with its audit handler
    start_worker(ORDERS).stop()
    assert {s.handler for s in publisher.registry.subscriptions()} == {
        "orders.welcome_order", "orders.audit_users",
    }

    # When it is redeployed without it
    start_worker(ORDERS, env={"ORDERS_WITHOUT_AUDIT": "1"})

    # Then the registry holds only the remaining handler, and publishes reach only it
    assert [s.handler for s in publisher.registry.subscriptions()] == ["orders.welcome_order"]
    result = wait_until(
        lambda: (r := publisher.publish("user.registered", {"user_id": 1}))
        and len(r.deliveries) == 1 and r,
        timeout=2,
    )
    assert result.deliveries[0].handler == "orders.welcome_order"
    wait_until(lambda: effects(redis_client))
    assert [e["handler"] for e in effects(redis_client)] == ["orders.welcome_order"]


def test_a_new_subscription_is_seen_by_a_running_publisher_within_a_second(
    redis_url: str, publisher: EventBus
) -> None:
    from celery import Celery

    # Given a publisher that has already published (its registry view is warm)
    assert publisher.publish("stock.low", {"sku": "a"}).deliveries == ()

    # When another service records a subscription
    other = EventBus(Celery("stock", broker=redis_url), service="stock")
    other.subscribe("stock.*", name="reorder")(lambda event: None)
    registered_at = time.monotonic()
    other.register()

    # Then the publisher routes to it within one second
    wait_until(lambda: publisher.publish("stock.low", {"sku": "a"}).deliveries, timeout=2)
    assert time.monotonic() - registered_at < 1.0
    other.close()


def test_a_steady_publish_costs_one_round_trip(
    publisher: EventBus, redis_client: redis.Redis, start_worker
) -> None:
    start_worker(MAILER).stop()
    publisher.publish("user.registered", {"warm": True})
    redis_client.config_resetstat()
    started = time.monotonic()
    for i in range(200):
        publisher.publish("user.registered", {"user_id": i})
    elapsed = time.monotonic() - started
    stats = redis_client.info("commandstats")
    calls = {name: value["calls"] for name, value in stats.items()}
    # One script call per publish; the only other traffic is the background version check.
    assert calls.pop("cmdstat_evalsha") == 200
    # (commandstats also counts the commands the script runs inside Redis)
    assert calls.pop("cmdstat_lpush") == 200
    # The script checks the type of each key before its first write: queue, ledger, due set
    assert calls.pop("cmdstat_type") == 3 * 200
    assert calls.pop("cmdstat_hsetnx") == calls.pop("cmdstat_zadd") == 200  # the delivery ledger
    assert calls.pop("cmdstat_publish") == 200  # the task-sent event Flower shows
    calls.pop("cmdstat_config|resetstat", None)
    # The client's pool opens a second connection (HELLO, PING) once if the background check
    # happens to run while a publish holds the first one; that is once, not per publish.
    assert calls.pop("cmdstat_hello", 0) <= 1 and calls.pop("cmdstat_ping", 0) <= 1
    checks = calls.pop("cmdstat_get", 0)
    assert checks <= elapsed / publisher.settings.registry_refresh_interval + 2
    # An earlier test that ran a delivery in this process left its alive key being renewed
    # (one SET every RENEW_INTERVAL), which lands in the window now and then; a publish
    # itself sets nothing.
    renewals = calls.pop("cmdstat_set", 0)
    assert renewals <= elapsed / liveness.RENEW_INTERVAL + 1
    assert calls == {}


def test_fan_out_is_all_or_nothing(
    start_worker, publisher: EventBus, redis_client: redis.Redis
) -> None:
    # Given two subscribers, one of whose queue keys cannot take a message
    start_worker(ORDERS).stop()
    start_worker(MAILER).stop()
    redis_client.set("events.mailer", "not a list")

    # When an event for both is published, it fails as a whole
    with pytest.raises(PublishError, match="refused"):
        publisher.publish("user.registered", {"user_id": 1})

    # Then no subscriber got it
    assert redis_client.llen("events.orders") == 0


def test_an_unreachable_broker_fails_fast_and_sends_nothing(redis_url: str) -> None:
    from celery import Celery

    from ..harness import free_port

    bus = EventBus(
        Celery("shop", broker=f"redis://127.0.0.1:{free_port()}/0"),
        service="shop",
        publish_timeout=1.0,
    )
    started = time.monotonic()
    with pytest.raises(PublishError):
        bus.publish("user.registered", {"user_id": 1})
    assert time.monotonic() - started < 3.0
    bus.close()


def test_events_published_by_a_handler_chain_correlation_and_causation(
    start_worker, publisher: EventBus, redis_client: redis.Redis
) -> None:
    start_worker(ORDERS)
    start_worker(MAILER)
    first = publisher.publish("user.registered", {"user_id": 9, "chain": True})

    def order_mail() -> dict[str, object] | None:
        return next((e for e in effects(redis_client) if e["handler"] == "mailer.order_mail"), None)

    followed = wait_until(order_mail)
    assert followed["source"] == "orders"
    assert followed["correlation_id"] == first.event.id
    assert followed["causation_id"] == first.event.id
    assert followed["event_id"] != first.event.id


def test_no_subscriber_is_not_an_error_unless_asked(
    publisher: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="celery_events"):
        assert publisher.publish("nobody.listens", {}).deliveries == ()
    assert "no subscriber for 'nobody.listens'" in caplog.text
    with pytest.raises(NoSubscribersError, match="nobody.listens"):
        publisher.publish("nobody.listens", {}, require_subscribers=True)
