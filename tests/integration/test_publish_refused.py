"""A publish the broker refuses sends nothing: queues, ledger and catalog stay as they were.

Real Redis 7 ACL users (new users get no channel rights, so the task-sent PUBLISH fails after
the pushes) and keys of the wrong type, on a real redis-server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from celery_events import EventBus, PublishError, RegistryError
from celery_events.registry import Subscription

from ..harness import RedisServer, wait_until

PASSWORD = "pw"
SUBSCRIPTIONS = [
    Subscription("user.*", "orders", "orders.audit_users", "events.orders"),
    Subscription("user.registered", "mailer", "mailer.send_welcome", "events.mailer"),
]


def snapshot(client: redis.Redis) -> dict[bytes, object]:
    """Every key with its type and whole content, but the alive keys of processes: this test
    process renews its own every 2 s (and makes it again if a test emptied Redis), whatever
    any publish does."""
    read = {
        b"list": lambda k: client.lrange(k, 0, -1),
        b"hash": client.hgetall,
        b"zset": lambda k: client.zrange(k, 0, -1, withscores=True),
        b"string": client.get,
        b"set": client.smembers,
    }
    state: dict[bytes, object] = {}
    for key in client.keys("*"):
        if key.startswith(b"celery_events:alive:"):
            continue
        kind = client.type(key)
        state[key] = (kind, read[kind](key))
    return state


@pytest.fixture
def acl_user(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[object]:
    """Make Redis ACL users with the given rules; each is deleted after the test."""
    made: list[str] = []

    def make(name: str, *rules: str) -> str:
        redis_client.execute_command("ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}", *rules)
        made.append(name)
        return f"redis://{name}:{PASSWORD}@127.0.0.1:{redis_server.port}/0"

    yield make
    for name in made:
        redis_client.execute_command("ACL", "DELUSER", name)


@pytest.fixture
def registered(redis_url: str) -> Iterator[EventBus]:
    """Two subscriber services recorded in the registry by an unrestricted client."""
    admin = EventBus(Celery("admin", broker=redis_url), service="admin")
    for service in ("orders", "mailer"):
        admin.registry.register(service, [s for s in SUBSCRIPTIONS if s.service == service])
    yield admin
    admin.close()


def shop(url: str, **settings: object) -> EventBus:
    return EventBus(Celery("shop", broker=url), service="shop", **{"publish_timeout": 1.0, **settings})


def test_a_user_without_channel_rights_gets_an_error_and_nothing_is_queued(
    acl_user, registered: EventBus, redis_client: redis.Redis
) -> None:
    # Given a Redis 7 user made as new users are: every key and command, no channel
    url = acl_user("shop", "~*", "+@all", "resetchannels")
    bus = shop(url)
    before = snapshot(redis_client)
    try:
        # When the shop publishes an event two services subscribe to (its first: catalog too)
        with pytest.raises(PublishError) as caught:
            bus.publish("user.registered", {"user_id": 1})
    finally:
        bus.close()
    # Then the error says nothing was sent, and what to grant or turn off
    message = str(caught.value)
    assert "No delivery was sent" in message
    assert "&*" in message and "allchannels" in message and "task_events=False" in message
    # And it is true: no queue, ledger or catalog entry was written
    assert snapshot(redis_client) == before
    assert redis_client.llen("events.orders") == 0 == redis_client.llen("events.mailer")


def test_with_task_events_off_the_same_user_publishes(
    acl_user, registered: EventBus, redis_client: redis.Redis
) -> None:
    url = acl_user("shop", "~*", "+@all", "resetchannels")
    bus = shop(url, task_events=False)
    try:
        result = bus.publish("user.registered", {"user_id": 1})
    finally:
        bus.close()
    assert len(result.deliveries) == 2
    assert redis_client.llen("events.orders") == 1 == redis_client.llen("events.mailer")


def test_a_user_without_write_rights_on_the_ledger_gets_an_error_naming_key_rights(
    acl_user, registered: EventBus, redis_client: redis.Redis
) -> None:
    # Given a user that may write the queues but only read the celery-events keys
    url = acl_user("shop", "~events.*", "%R~celery_events:*", "+@all", "&*")
    bus = shop(url)
    before = snapshot(redis_client)
    try:
        with pytest.raises(PublishError) as caught:
            bus.publish("user.registered", {"user_id": 1})
    finally:
        bus.close()
    message = str(caught.value)
    assert "No delivery was sent" in message and "~*" in message
    assert snapshot(redis_client) == before


@pytest.mark.parametrize(
    "wrong_key", ["celery_events:ledger:mailer", "celery_events:ledger:mailer:due", "celery_events:published"]
)
def test_a_key_of_the_wrong_type_late_in_the_fan_out_undoes_the_earlier_writes(
    wrong_key: str, registered: EventBus, redis_url: str, redis_client: redis.Redis
) -> None:
    # Given the second subscriber's ledger (or the catalog) is a string, so its write fails
    # after the queues and the first subscriber's ledger were written
    redis_client.set(wrong_key, "not a hash")
    bus = shop(redis_url)
    before = snapshot(redis_client)
    try:
        with pytest.raises(PublishError, match="WRONGTYPE") as caught:
            bus.publish("user.registered", {"user_id": 1})
    finally:
        bus.close()
    # Then nothing of the event is left anywhere
    assert "No delivery was sent" in str(caught.value)
    assert snapshot(redis_client) == before


def test_a_retried_publish_that_fails_keeps_what_the_first_attempt_wrote(
    registered: EventBus, redis_url: str, redis_client: redis.Redis
) -> None:
    # Given an event published once: its deliveries are queued and in the ledger
    first = shop(redis_url)
    try:
        event = first.new_event("user.registered", {"user_id": 1})
        first.publish_event(event)
    finally:
        first.close()
    queued = snapshot(redis_client)
    # When another process sends the same event again (an outbox relay that resends it) and
    # that fails late: the catalog entry of its first publish meets a string
    redis_client.delete("celery_events:published")
    redis_client.set("celery_events:published", "x")
    before = snapshot(redis_client)
    again = shop(redis_url)
    try:
        with pytest.raises(PublishError, match="WRONGTYPE"):
            again.publish_event(event)
    finally:
        again.close()
    # Then the first attempt's deliveries and ledger entries are as they were
    assert snapshot(redis_client) == before
    catalog = b"celery_events:published"
    assert {k: v for k, v in before.items() if k != catalog} == {
        k: v for k, v in queued.items() if k != catalog
    }


def test_a_registration_the_user_may_not_finish_writes_nothing(
    acl_user, redis_client: redis.Redis
) -> None:
    # Given a user that may write its record but not the version key
    url = acl_user("orders", "%R~*", "~celery_events:registry:orders", "~celery_events:services", "+@all", "&*")
    bus = EventBus(Celery("orders", broker=url), service="orders")
    try:
        with pytest.raises(RegistryError, match=r"no permissions.*Nothing was recorded.*celery eventbus acl"):
            bus.registry.register("orders", SUBSCRIPTIONS[:1])
    finally:
        bus.close()
    # Then the transaction was discarded whole
    assert redis_client.keys("celery_events:registry:*") == []


BUSY_LUA = """
local start = redis.call('TIME')
while true do
  local now = redis.call('TIME')
  if (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > tonumber(ARGV[1]) then return 1 end
end
"""


def test_a_publish_whose_reply_was_lost_does_not_claim_nothing_was_sent(
    registered: EventBus, redis_url: str, redis_client: redis.Redis
) -> None:
    # Given Redis is busy (another client's long script) for longer than the publisher waits
    bus = shop(redis_url, publish_timeout=0.3)
    busy = threading.Thread(
        target=redis.Redis.from_url(redis_url).eval, args=(BUSY_LUA, 0, 1_500_000)
    )
    try:
        bus.registry.refresh()
        busy.start()
        wait_until(lambda: _is_busy(redis_url), what="Redis to be busy")
        # When the shop publishes: the script reaches Redis, its reply does not come in time
        with pytest.raises(PublishError) as caught:
            bus.publish("user.registered", {"user_id": 1})
    finally:
        busy.join()
        bus.close()
    # Then the error says the deliveries may have been queued, and how to resend safely: the
    # script sat unread in Redis's socket when the publisher gave up, and Redis runs it or not
    # depending on whether it reads the command before it notices the closed connection (both
    # happen here), so "nothing was sent" cannot be said
    message = str(caught.value)
    assert "No delivery was sent" not in message
    assert "may have been queued" in message and "publish_event" in message


def _is_busy(url: str) -> bool:
    try:
        redis.Redis.from_url(url, socket_timeout=0.05).ping()
    except redis.RedisError:
        return True
    return False
