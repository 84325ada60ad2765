"""A bad registry record (hand-edited, or written by a buggy or newer tool) costs its own
service its subscriptions, and nothing else: every publisher keeps publishing to the others."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from celery_events import EventBus
from celery_events.backends.redis.stores import RedisRegistry
from celery_events.registry import Registry, Subscription

from ..harness import wait_until

# A prefix of their own: buses other tests left open in this process watch the default one,
# and would report the bad records too.
PREFIX = "registry_records:"
SUBSCRIPTIONS = f"{PREFIX}subscriptions"
VERSION = f"{PREFIX}version"


@pytest.fixture
def publisher(redis_url: str) -> Iterator[EventBus]:
    bus = EventBus(Celery("shop", broker=redis_url), service="shop", key_prefix=PREFIX)
    yield bus
    bus.close()


def record(**entry: object) -> bytes:
    good = {"pattern": "user.*", "handler": "broken.welcome", "queue": "events.broken"}
    return json.dumps({"registered_at": 1.0, "subscriptions": [{**good, **entry}]}).encode()


BAD_RECORDS = {
    "pattern a number": record(pattern=7),
    "pattern not a pattern": record(pattern="User..*"),
    "handler null": record(handler=None),
    "handler empty": record(handler=""),
    "queue a list": record(queue=["events.broken"]),
    "entry a string": json.dumps({"registered_at": 1.0, "subscriptions": ["user.*"]}).encode(),
    "subscriptions a string": json.dumps({"registered_at": 1.0, "subscriptions": "user.*"}).encode(),
    "subscriptions an object": json.dumps({"registered_at": 1, "subscriptions": {"a": 1}}).encode(),
    "registered_at a string": json.dumps({"registered_at": "now", "subscriptions": []}).encode(),
    "record a list": b"[1, 2]",
    "not JSON": b"\xff{not json",
}


def register(client: redis.Redis, service: str, pattern: str = "user.*") -> None:
    Registry(RedisRegistry(client, key_prefix=PREFIX)).register(
        service, [Subscription(pattern, service, f"{service}.welcome", f"events.{service}")]
    )


def watcher_alive() -> bool:
    return any(t.name == "celery-events-registry" and t.is_alive() for t in threading.enumerate())


def handlers(bus: EventBus, name: str = "user.registered") -> list[str]:
    return sorted(d.handler for d in bus.publish(name, {"n": 1}).deliveries)


@pytest.mark.parametrize("raw", BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_a_bad_record_skips_that_service_and_every_publish_goes_on(
    publisher: EventBus, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture, raw: bytes
) -> None:
    # Given a publisher that already publishes to the orders service (its watcher runs)
    register(redis_client, "orders")
    assert handlers(publisher) == ["orders.welcome"]

    # When another service's record is overwritten with a bad one, the way `redis-cli HSET`
    # would, and later a third service registers (a new registry version)
    caplog.set_level(logging.ERROR, logger="celery_events.registry")
    redis_client.hset(SUBSCRIPTIONS, "broken", raw)
    redis_client.set(VERSION, uuid.uuid4().hex)
    register(redis_client, "mailer")

    # Then publishes reach every other service, typed errors never occur, the watcher lives
    wait_until(lambda: handlers(publisher) == ["mailer.welcome", "orders.welcome"])
    for _ in range(5):
        assert handlers(publisher) == ["mailer.welcome", "orders.welcome"]
    assert watcher_alive()
    # And the bad record is reported once, naming its service, however often the view reloads
    for service in ("billing", "audit", "search"):
        register(redis_client, service, pattern="payment.*")
        publisher.registry.refresh()
    assert handlers(publisher, "payment.failed") == [
        "audit.welcome", "billing.welcome", "search.welcome"
    ]
    reports = [r for r in caplog.records if "registry record of service 'broken'" in r.message]
    assert len(reports) == 1, caplog.text
    assert watcher_alive()


def test_a_bad_record_is_reported_again_when_it_changes_and_forgotten_when_fixed(
    publisher: EventBus, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="celery_events.registry")
    register(redis_client, "orders")
    redis_client.hset(SUBSCRIPTIONS, "broken", record(pattern=7))
    redis_client.set(VERSION, uuid.uuid4().hex)
    publisher.registry.refresh()
    # A different bad version is news: logged again, naming what is wrong with it now
    redis_client.hset(SUBSCRIPTIONS, "broken", record(queue=3))
    redis_client.set(VERSION, uuid.uuid4().hex)
    publisher.registry.refresh()
    reports = [r.message for r in caplog.records if "'broken'" in r.message]
    assert len(reports) == 2, reports
    assert "pattern must be a string" in reports[0] and "queue 3" in reports[1]
    # The service registering properly again brings its subscriptions back
    register(redis_client, "broken")
    publisher.registry.refresh()
    assert handlers(publisher) == ["broken.welcome", "orders.welcome"]
