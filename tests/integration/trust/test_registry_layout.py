"""The Redis registry's layout: one key per service's record (which ACLs can confine), records
of the layout before (one hash) still read, and the one-time migration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import redis
from celery import Celery

from celery_events import EventBus

OLD = "celery_events:subscriptions"


def old_record(queue: str) -> str:
    """A record as the version before wrote it, in its hash."""
    return json.dumps(
        {"registered_at": time.time(), "subscriptions": [{"pattern": "user.*", "handler": "orders.a", "queue": queue}]}
    )


def test_a_record_of_the_layout_before_is_read_until_its_service_registers_again(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # Given orders registered by the version before (a field of the shared hash)
    redis_client.hset(OLD, "orders", old_record("events.orders"))
    redis_client.set("celery_events:version", "old")
    publisher = EventBus(Celery("shop", broker=redis_url), service="shop")
    try:
        # Then a publisher of this version delivers to it
        assert [d.queue for d in publisher.publish("user.registered", {}).deliveries] == ["events.orders"]
        # When orders registers with this version, its own key wins over the old field
        orders = EventBus(Celery("orders", broker=redis_url), service="orders")
        orders.subscribe("user.*", name="b", queue="events.orders.new")(lambda event: None)
        orders.register()
        orders.close()
        publisher.registry.refresh()
        assert [d.queue for d in publisher.publish("user.registered", {}).deliveries] == ["events.orders.new"]
    finally:
        publisher.close()


def test_migrate_registry_moves_old_records_to_their_own_keys(redis_url: str, redis_client: redis.Redis) -> None:
    # Given two services in the old hash, one of which already has a newer record of its own
    redis_client.hset(OLD, mapping={"orders": old_record("events.orders"), "mailer": old_record("old.mailer")})
    newer = old_record("new.mailer")
    redis_client.set("celery_events:registry:mailer", newer)
    # When the operator migrates
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.services.orders", "eventbus", "migrate-registry"],
        env={**os.environ, "CELERY_EVENTS_TEST_BROKER": redis_url},
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "mailer, orders" in done.stdout
    # Then each record has its own key (the newer one kept), the index lists them, the hash
    # is gone, and publishers see the same subscriptions
    assert not redis_client.exists(OLD)
    assert redis_client.get("celery_events:registry:mailer") == newer.encode()
    assert json.loads(redis_client.get("celery_events:registry:orders") or b"")["subscriptions"][0]["queue"] == "events.orders"
    assert redis_client.smembers("celery_events:services") == {b"orders", b"mailer"}
    publisher = EventBus(Celery("shop", broker=redis_url), service="shop")
    try:
        assert sorted(d.queue for d in publisher.publish("user.registered", {}).deliveries) == [
            "events.orders",
            "new.mailer",
        ]
    finally:
        publisher.close()
