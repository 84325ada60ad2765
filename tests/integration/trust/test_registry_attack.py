"""A process that is not `orders` registers as `orders`: with signed registrations its record
is ignored by publishers that trust orders' key; with the ACL users it cannot write it at all.
Real worker processes, a real Redis."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from celery import Celery

from celery_events import EventBus
from celery_events.trust import generate_ed25519

from ...harness import RedisServer, Worker, wait_until

SERVICE = "tests.services.guarded"


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """Keys of orders and shop; the intruder has a key of its own, trusted by nobody."""
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    for service in ("orders", "shop", "intruder"):
        private, public = generate_ed25519()
        (tmp_path / f"{service}.k1.key").write_bytes(private)
        if service != "intruder":
            (trusted / f"{service}.k1.pub").write_bytes(public)
    return tmp_path


def shop(url: str, keys: Path) -> EventBus:
    return EventBus(
        Celery("shop", broker=url),
        service="shop",
        signing_key=str(keys / "shop.k1.key"),
        trusted_keys=str(keys / "trusted"),
    )


def effects(client: redis.Redis) -> list[dict[str, str]]:
    return [json.loads(raw) for raw in client.lrange("test:effects", 0, -1)]


def test_an_impostor_registering_as_orders_gets_no_delivery(
    keys: Path, redis_url: str, redis_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    env = {"GUARDED_EFFECTS_URL": redis_url, "GUARDED_KEYS": str(keys)}
    # Given the real orders worker, signing its record
    start_worker(SERVICE, env=env)
    publisher = shop(redis_url, keys)
    try:
        assert [s.queue for s in publisher.registry.match("user.registered")] == ["events.orders"]
        # When another process (the intruder, without orders' key) starts a worker as orders
        # with its handlers on its own queue; its record replaces orders' in Redis
        start_worker(
            SERVICE,
            env={"GUARDED_EFFECTS_URL": redis_url, "GUARDED_NAME": "intruder", "GUARDED_QUEUE": "intruder.stolen"},
        )
        record = json.loads(redis_client.get("celery_events:registry:orders") or b"{}")
        assert record["subscriptions"][0]["queue"] == "intruder.stolen"
        # Then the publisher ignores it and keeps delivering to orders' own queue
        wait_until(lambda: publisher.registry.ignored(), what="record ignored")
        event = publisher.publish("user.registered", {"user_id": 1}).event
        wait_until(lambda: [e["by"] for e in effects(redis_client)] == ["orders"], what="handled")
        assert effects(redis_client)[0]["event_id"] == event.id
        assert redis_client.llen("intruder.stolen") == 0
        (ignored,) = publisher.registry.ignored()
        assert "not signed" in ignored.reason and ignored.using_registered_at is not None
        # And an impostor that registers NO handlers as orders does not make it drop events
        EventBus(Celery("intruder", broker=redis_url), service="orders").register()
        assert json.loads(redis_client.get("celery_events:registry:orders") or b"{}")["subscriptions"] == []
        publisher.registry.refresh()
        assert [d.queue for d in publisher.publish("user.registered", {"user_id": 2}).deliveries] == [
            "events.orders"
        ]
        wait_until(lambda: len(effects(redis_client)) == 2, what="second handled")
    finally:
        publisher.close()
    # And `celery eventbus subscriptions` shows the record as ignored, with its reason
    shown = subprocess.run(
        [sys.executable, "-m", "celery", "-A", SERVICE, "eventbus", "subscriptions", "--json"],
        env={**os.environ, "CELERY_EVENTS_TEST_BROKER": redis_url, **env},
        capture_output=True, text=True, timeout=60,
    )
    rows = json.loads(shown.stdout)
    assert [r["service"] for r in rows if "ignored" in r] == ["orders"]
    assert "not signed" in next(r["ignored"] for r in rows if "ignored" in r)


def test_with_acl_users_an_impostor_cannot_register_as_orders(
    keys: Path,
    redis_server: RedisServer,
    redis_url: str,
    redis_client: redis.Redis,
    start_worker: Callable[..., Worker],
) -> None:
    # Given the ACL users of orders and intruder, as printed
    env = {"CELERY_EVENTS_TEST_BROKER": redis_url, "GUARDED_EFFECTS_URL": redis_url}
    text = subprocess.run(
        [sys.executable, "-m", "celery", "-A", SERVICE, "eventbus", "acl", "--password", "pw",
         "--service=orders", "--service=intruder"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    cli = shutil.which("redis-cli") or os.path.join(os.path.dirname(redis_server.binary), "redis-cli")
    subprocess.run([cli, "-p", str(redis_server.port)], input=text, check=True, text=True, capture_output=True)
    try:
        start_worker(SERVICE, env={**env, "CELERY_EVENTS_TEST_BROKER": redis_server.url.replace("://", "://orders:pw@")})
        before = redis_client.get("celery_events:registry:orders")
        # When the intruder, as its own user, starts a worker as orders
        url = redis_server.url.replace("://", "://intruder:pw@")
        worker = start_worker(
            SERVICE,
            env={**env, "CELERY_EVENTS_TEST_BROKER": url, "GUARDED_NAME": "intruder", "GUARDED_QUEUE": "intruder.stolen"},
            ready=False,
        )
        # Then it refuses to start: it may not write orders' record, which is unchanged
        worker.process.wait(timeout=60)
        log = worker.log()
        assert "Could not record the subscriptions of service 'orders'" in log and "no permissions" in log
        assert redis_client.get("celery_events:registry:orders") == before
    finally:
        for user in ("orders", "intruder", "flower", "eventbus-operator"):
            redis_client.execute_command("ACL", "DELUSER", user)
