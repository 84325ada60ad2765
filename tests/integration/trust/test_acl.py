"""The Redis ACL users `celery eventbus acl` prints, applied with redis-cli and used by real
workers and publishers: each service may publish, consume (retries, dead letters, the ledger
and its sweeper, task events) and register itself, and may not write another service's record,
take from or rewrite its queue, or write its inbox, ledger or dead letters."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
import redis
from celery import Celery

from celery_events import EventBus
from celery_events.errors import PublishError, RegistryError
from celery_events.registry import Subscription

from ...harness import RedisServer, Worker, wait_until

PASSWORD = "s3cret-pw"
SERVICE = "tests.services.guarded"


def user_url(server: RedisServer, user: str) -> str:
    return f"redis://{user}:{PASSWORD}@127.0.0.1:{server.port}/0"


def printed_rules(redis_url: str, *services: str) -> str:
    """What `celery -A tests.services.guarded eventbus acl` prints, run as the operator."""
    env = {**os.environ, "CELERY_EVENTS_TEST_BROKER": redis_url, "GUARDED_EFFECTS_URL": redis_url}
    args = [f"--service={s}" for s in services]
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", SERVICE, "eventbus", "acl", "--password", PASSWORD, *args],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    return done.stdout


@pytest.fixture
def acl_users(redis_server: RedisServer, redis_url: str, redis_client: redis.Redis) -> Iterator[str]:
    """The users printed for orders and shop (and Flower's, the operator's), created by piping
    the printed lines into redis-cli as the recipe says."""
    text = printed_rules(redis_url, "orders", "shop")
    cli = shutil.which("redis-cli") or os.path.join(os.path.dirname(redis_server.binary), "redis-cli")
    done = subprocess.run(
        [cli, "-p", str(redis_server.port)], input=text, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["OK"] * 4, (done.stdout, text)
    yield text
    for user in ("orders", "shop", "flower", "eventbus-operator"):
        redis_client.execute_command("ACL", "DELUSER", user)


def shop(server: RedisServer) -> EventBus:
    return EventBus(Celery("shop", broker=user_url(server, "shop")), service="shop", publish_timeout=2.0)


def effects(client: redis.Redis) -> list[dict[str, str]]:
    return [json.loads(raw) for raw in client.lrange("test:effects", 0, -1)]


def test_a_restricted_service_publishes_consumes_retries_dead_letters_and_registers(
    acl_users: str,
    redis_server: RedisServer,
    redis_url: str,
    redis_client: redis.Redis,
    start_worker: Callable[..., Worker],
) -> None:
    # Given Flower's user listening to the task events
    flower = redis.Redis.from_url(user_url(redis_server, "flower"))
    events = flower.pubsub()
    events.psubscribe("/0.celeryev/*")
    # And the orders worker running as its restricted user (it registers itself at start)
    worker = start_worker(
        SERVICE,
        env={"CELERY_EVENTS_TEST_BROKER": user_url(redis_server, "orders"), "GUARDED_EFFECTS_URL": redis_url},
    )
    assert redis_client.exists("celery_events:registry:orders")
    # When shop, as its restricted user, publishes three events
    publisher = shop(redis_server)
    try:
        welcomed = publisher.publish("user.registered", {"user_id": 1}).event.id
        flaky = publisher.publish("user.flaky", {"user_id": 2}).event.id
        broken = publisher.publish("user.broken", {"user_id": 3}).event.id
    finally:
        publisher.close()
    # Then each is handled, the flaky one after a retry, the broken one dead-lettered
    wait_until(lambda: {e["event_id"] for e in effects(redis_client)} == {welcomed, flaky}, what="handled")
    wait_until(lambda: redis_client.zcard("celery_events:dead:orders:index") == 1, what="dead letter")
    (letter,) = redis_client.hvals("celery_events:dead:orders")
    assert broken in letter.decode()
    # And the ledger is emptied as deliveries settle (the worker's sweeper keeps it)
    wait_until(lambda: redis_client.hlen("celery_events:ledger:orders") == 0, what="ledger settled")
    # And Flower's user heard the deliveries' task events
    seen: set[str] = set()

    def heard_success() -> bool:
        message = events.get_message(timeout=0.2)
        while message is not None:
            if message["type"] == "pmessage":
                body = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
                # Celery batches worker events into a list; one event is a dict.
                for item in body if isinstance(body, list) else [body]:
                    seen.add(item["type"])
            message = events.get_message(timeout=0.01)
        return "task-succeeded" in seen

    wait_until(heard_success, what="task events")
    assert "task-sent" in seen
    events.close()
    # And nothing was refused on the way
    assert "NOPERM" not in worker.log() and "no permissions" not in worker.log(), worker.log()


def test_a_restricted_service_cannot_touch_another_services_record_queue_or_state(
    acl_users: str, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    # Given orders' record, queue, ledger, inbox and dead letters, written by the operator
    admin = EventBus(Celery("orders", broker=redis_server.url), service="orders")
    admin.registry.register("orders", [Subscription("user.*", "orders", "orders.welcome", "events.orders")])
    admin.close()
    redis_client.lpush("events.orders", "delivery")
    redis_client.hset("celery_events:ledger:orders", "t1", "entry")
    redis_client.hset("celery_events:dead:orders", "d1", "letter")
    redis_client.set("celery_events:inbox:orders.welcome:e1", "done")
    redis_client.hset("celery_events:done:orders.welcome:28333334", "n", 1)
    before = {k: redis_client.dump(k) for k in redis_client.keys("*")}
    as_shop = redis.Redis.from_url(user_url(redis_server, "shop"))
    refused = [
        # another service's record, directly and through the bus
        ("SET", "celery_events:registry:orders", "{}"),
        ("DEL", "celery_events:registry:orders"),
        ("HSET", "celery_events:subscriptions", "orders", "{}"),
        # another service's queue: read, pop, delete, trim, rewrite
        ("LRANGE", "events.orders", "0", "-1"),
        ("LPOP", "events.orders"),
        ("RPOP", "events.orders"),
        ("BRPOP", "events.orders", "0.01"),
        ("DEL", "events.orders"),
        ("LTRIM", "events.orders", "1", "0"),
        ("LSET", "events.orders", "0", "forged"),
        ("RENAME", "events.orders", "events.shop"),
        # its ledger, inbox and dead letters
        ("HDEL", "celery_events:ledger:orders", "t1"),
        ("HSET", "celery_events:ledger:orders", "t1", "forged"),
        ("HGETALL", "celery_events:ledger:orders"),
        ("DEL", "celery_events:ledger:orders:due"),
        # keys of the wrong type where another's are missing (every publish to it would fail)
        ("LPUSH", "celery_events:ledger:orders", "x"),
        ("HSETNX", "celery_events:ledger:orders:due", "x", "y"),
        ("ZADD", "celery_events:ledger:orders", "1", "x"),
        ("HSETNX", "events.orders", "x", "y"),
        ("SET", "celery_events:inbox:orders.welcome:e2", "done"),
        ("DEL", "celery_events:inbox:orders.welcome:e1"),
        ("HSET", "celery_events:done:orders.welcome:28333334", "e1", "1"),
        ("DEL", "celery_events:done:orders.welcome:28333334"),
        ("HSET", "celery_events:dead:orders", "d2", "forged"),
        ("HDEL", "celery_events:dead:orders", "d1"),
        ("SREM", "celery_events:services", "orders"),
        # commands that act on every service
        ("FLUSHALL",),
        ("KEYS", "*"),
        ("SCRIPT", "FLUSH"),
        ("CONFIG", "GET", "*"),
    ]
    for command in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            as_shop.execute_command(*command)
    # A script cannot do it either: each command in it is checked on its own
    with pytest.raises(redis.exceptions.ResponseError, match="can't access"):
        as_shop.eval("return redis.call('LPOP', ARGV[1])", 0, "events.orders")
    with pytest.raises(redis.exceptions.NoPermissionError):
        as_shop.eval("return redis.call('LPOP', KEYS[1])", 1, "events.orders")
    bus = shop(redis_server)
    try:
        with pytest.raises(RegistryError, match="no permissions"):
            bus.registry.register("orders", [])
    finally:
        bus.close()
    assert {k: redis_client.dump(k) for k in redis_client.keys("*")} == before
    # What remains possible: appending (a delivery, real or forged; signing refuses a forged
    # one), adding a ledger entry, adding a name to the registry index
    assert redis_client.execute_command("ACL", "DRYRUN", "shop", "LPUSH", "events.orders", "x") == b"OK"
    assert redis_client.execute_command("ACL", "DRYRUN", "shop", "HSETNX", "celery_events:ledger:orders", "t9", "x") == b"OK"
    assert redis_client.execute_command("ACL", "DRYRUN", "shop", "SADD", "celery_events:services", "x") == b"OK"


def test_a_publish_the_rules_do_not_fully_allow_writes_nothing(
    acl_users: str, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    # Given orders subscribed, and shop's user stripped of its channel rights (so that the
    # task-sent PUBLISH at the end of the fan-out would be refused)
    admin = EventBus(Celery("orders", broker=redis_server.url), service="orders")
    admin.registry.register("orders", [Subscription("user.*", "orders", "orders.welcome", "events.orders")])
    admin.close()
    redis_client.execute_command("ACL", "SETUSER", "shop", "resetchannels")
    bus = shop(redis_server)
    try:
        with pytest.raises(PublishError, match="channel"):
            bus.publish("user.registered", {"user_id": 1})
    finally:
        bus.close()
    # Then the script refused before its first write: no delivery, no ledger entry
    assert redis_client.llen("events.orders") == 0
    assert redis_client.hlen("celery_events:ledger:orders") == 0
