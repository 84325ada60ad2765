"""A state-store outage never acks a delivery unhandled: it waits, or goes back to the broker,
and runs once the store is back.

Given a `celery worker` (two pool processes) of a service with two handlers whose inboxes and
dead letters live in a Redis of their own, and 200 events for each handler, when that Redis is
`kill -9`-ed in the middle of the stream and started again 3 s later on the same port (its
append-only file synced on every write), then every delivery's effect happens exactly once
(counted in another Redis), none is lost and none is dead-lettered. The same on RabbitMQ,
with the state on the ``registry_url`` Redis; the Django database store is in
tests/django/test_state_outage.py.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import redis
from celery import Celery
from kombu import Connection

from celery_events import EventBus
from celery_events.backends.base import StoreUnavailable, lease_value
from celery_events.backends.redis.client import connect
from celery_events.backends.redis.stores import RedisState

from ..harness import (
    RabbitMQServer,
    RedisServer,
    Worker,
    free_port,
    redis_server_binary,
    wait_until,
)
from .conftest import effects

EVENTS = 200
HANDLERS = ("outage.first", "outage.second")
OUTAGE = 3.0
QUEUE = "events.outage"
#: The time of the event the inbox is asked about directly.
T = 1_700_000_000.0


@pytest.fixture
def state_redis() -> Iterator[RedisServer]:
    """The state store's own redis-server, which the test stops and starts again."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(binary, persistent=True)
    server.start()
    yield server
    server.stop(kill=True)


def _outage_mid_stream(
    start_worker: Callable[..., Worker],
    broker_url: str,
    publisher: EventBus,
    ops: EventBus,
    state_redis: RedisServer,
    effects_url: str,
) -> None:
    redis_client = redis.Redis.from_url(effects_url)
    worker = start_worker(
        "tests.services.outage",
        env={
            "CELERY_EVENTS_TEST_BROKER": broker_url,
            "CELERY_EVENTS_TEST_STATE": state_redis.url,
            "CELERY_EVENTS_TEST_EFFECTS": effects_url,
        },
        args=["-c", "2"],
    )
    publisher.registry.refresh()
    results = [publisher.publish("outage.happened", {"n": n, "work": 0.02}) for n in range(EVENTS)]
    assert all(len(result.deliveries) == len(HANDLERS) for result in results)
    ids = [(result.event.id, result.event.time.timestamp()) for result in results]
    # Mid-stream: some deliveries handled, most still to come.
    wait_until(lambda: len(effects(redis_client)) >= 60, timeout=30, what="the first effects")
    state_redis.stop(kill=True)
    at_kill = len(effects(redis_client))
    time.sleep(OUTAGE)  # the outage itself, not a wait for something
    state_redis.start()

    expected = {(handler, event_id) for handler in HANDLERS for event_id, _ in ids}
    wait_until(
        lambda: len(effects(redis_client)) >= len(expected), timeout=45,
        what=f"{len(expected)} effects",
    )
    # Every delivery recorded as handled: no copy is left that could run a handler again.
    wait_until(
        lambda: all(
            ops.inbox.is_done(handler, event_id, event_time=at)
            for handler in HANDLERS
            for event_id, at in ids
        ),
        timeout=20, what="every inbox record",
    )
    seen = Counter((str(e["handler"]), str(e["event_id"])) for e in effects(redis_client))
    lost = expected - set(seen)
    duplicated = {pair: count for pair, count in seen.items() if count > 1}
    assert at_kill < len(expected), "the outage came after the stream had ended"
    assert not lost, f"{len(lost)} deliveries never took effect"
    assert not duplicated, f"{len(duplicated)} deliveries took effect more than once"
    assert set(seen) == expected
    assert ops.dead_letters.count() == 0
    log = worker.log()
    assert "the state store is unreachable" in log, "the worker never met the outage"
    assert "the state store is back" in log


def test_a_state_redis_outage_mid_stream_loses_and_repeats_nothing_on_redis(
    state_redis: RedisServer,
    start_worker: Callable[..., Worker],
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    publisher = EventBus(Celery("outage-pub", broker=redis_url), service="outage_pub")
    ops = EventBus(
        Celery("outage-ops", broker=redis_url), service="outage",
        state=RedisState(connect(state_redis.url, 2.0), "celery_events:"),
    )
    try:
        _outage_mid_stream(start_worker, redis_url, publisher, ops, state_redis, redis_url)
        # The lost-delivery ledger (on the broker) is settled too.
        wait_until(lambda: redis_client.hlen("celery_events:ledger:outage") == 0, timeout=10)
    finally:
        publisher.close()
        ops.close()


@pytest.mark.timeout(120)
def test_a_state_redis_outage_mid_stream_loses_and_repeats_nothing_on_rabbitmq(
    state_redis: RedisServer,
    rabbitmq_server: RabbitMQServer,
    start_worker: Callable[..., Worker],
    redis_url: str,
) -> None:
    with Connection(rabbitmq_server.url) as connection:
        try:  # the node lives for the whole session: start from an empty queue
            connection.default_channel.queue_purge(QUEUE)
        except Exception:  # not declared yet
            pass
    # The bus's public API only: the backend behind amqp:// may change, this does not.
    publisher = EventBus(
        Celery("outage-pub", broker=rabbitmq_server.url), service="outage_pub",
        registry_url=state_redis.url,
    )
    ops = EventBus(
        Celery("outage-ops", broker=rabbitmq_server.url), service="outage",
        registry_url=state_redis.url,
    )
    try:
        _outage_mid_stream(
            start_worker, rabbitmq_server.url, publisher, ops, state_redis, redis_url
        )
    finally:
        publisher.close()
        ops.close()


def test_a_claim_and_a_release_sent_twice_with_one_lease_count_once(redis_url: str) -> None:
    # What a run does when a call's reply was lost: it sends the same call again.
    bus = EventBus(Celery("outage-ops", broker=redis_url), service="outage")
    try:
        inbox = bus.inbox
        lease = lease_value("task-1", inbox.process_token())
        claims = [
            inbox.claim("outage.first", "ev-1", "task-1", event_time=T, lease=lease,
                        lease_seconds=60, use_inbox=True)
            for _ in range(2)
        ]
        assert [(c.status, c.starts) for c in claims] == [("run", 1), ("run", 1)]
        failures = [
            inbox.release("outage.first", "ev-1", "task-1", lease=lease, failed=True)
            for _ in range(2)
        ]
        assert failures == [1, 1]
        # The next run (its own lease) counts as it always did.
        again = lease_value("task-1", inbox.process_token())
        claim = inbox.claim("outage.first", "ev-1", "task-1", event_time=T, lease=again,
                            lease_seconds=60, use_inbox=True)
        assert (claim.status, claim.starts, claim.failures) == ("run", 1, 1)
        assert inbox.succeed("outage.first", "ev-1", "task-1", event_time=T, lease=again,
                             use_inbox=True, ttl_seconds=60)
        assert inbox.succeed("outage.first", "ev-1", "task-1", event_time=T, lease=again,
                             use_inbox=True, ttl_seconds=60)
        assert inbox.is_done("outage.first", "ev-1", event_time=T)
    finally:
        bus.close()


def test_an_unreachable_state_redis_is_a_store_unavailable_error() -> None:
    # The delivery path catches StoreError and never imports redis: the backend types it.
    inbox = RedisState(connect(f"redis://127.0.0.1:{free_port()}/0", 1.0), "celery_events:").inbox(
        "outage"
    )
    with pytest.raises(StoreUnavailable, match="onnect"):
        inbox.claim("outage.first", "ev-1", "task-1", event_time=T, lease="{}",
                    lease_seconds=60, use_inbox=True)
    with pytest.raises(StoreUnavailable):
        inbox.release("outage.first", "ev-1", "task-1", lease="{}", failed=True)
