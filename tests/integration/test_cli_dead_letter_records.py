"""`celery eventbus dead-letters` with records that cannot be read or would replay where their
service does not listen: every command keeps working for every service, unsafe replays exit 2."""

from __future__ import annotations

import base64
import json
from typing import Any

import redis

from celery_events import Event
from celery_events.backends.redis.stores import RedisState
from celery_events.deadletters import DeadLetterStore, Reason, new_letter

from .test_cli import BILLING, ORDERS, eventbus, register

CORRUPT = b'{"id": "corrupt", "service": "billing", "reason": 7, \xff'


def add(client: redis.Redis, service: str, handler: str, queue: str) -> str:
    envelope = Event.create("order.created", {"order_id": 1}, source="shop").to_envelope()
    letter = new_letter(
        service=service,
        reason=Reason.RETRIES_EXHAUSTED,
        error=RuntimeError("card declined"),
        handler=handler,
        envelope=envelope,
        attempts=1,
        queue=queue,
    )
    return DeadLetterStore(RedisState(client, "celery_events:").dead_letters(service), service).add(letter).id


def listed(*args: str) -> list[dict[str, Any]]:
    done = eventbus("dead-letters", "list", "--json", *args)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def test_an_unreadable_record_is_listed_shown_and_purged_and_its_replay_exits_2(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # Given billing and orders registered, each with dead letters, and a corrupt record
    # in billing's store (a hand edit, say)
    register(BILLING, ORDERS)
    ours = add(redis_client, "orders", "orders.welcome_order", "events.orders")
    redis_client.hset("celery_events:dead:billing", "corrupt", CORRUPT)
    redis_client.zadd("celery_events:dead:billing:index", {"corrupt": 1.0})

    # When the operator lists every service's dead letters
    table = eventbus("dead-letters", "list")

    # Then the list works, the corrupt record in it with its id and problem
    assert table.returncode == 0, table.stderr
    assert "corrupt" in table.stdout and "unreadable_record" in table.stdout
    assert "Traceback" not in table.stderr
    by_id = {lt["id"]: lt for lt in listed()}
    assert set(by_id) == {ours, "corrupt"}
    assert base64.b64decode(by_id["corrupt"]["raw_base64"]) == CORRUPT
    # And show prints the stored text
    shown = eventbus("dead-letters", "show", "corrupt")
    assert shown.returncode == 0, shown.stderr
    assert "stored record:" in shown.stdout and '"reason": 7' in shown.stdout

    # When it is replayed, alone or with every other one
    alone = eventbus("dead-letters", "replay", "corrupt")
    every = eventbus("dead-letters", "replay", "--all")

    # Then both exit 2 with a sentence, and nothing was replayed
    for done in (alone, every):
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert "Dead letter corrupt cannot be replayed" in done.stderr
        assert "Traceback" not in done.stderr
    assert redis_client.llen("events.orders") == 0

    # And purge removes it, and only it
    purged = eventbus("dead-letters", "purge", "corrupt")
    assert purged.returncode == 0, purged.stderr
    assert [lt["id"] for lt in listed()] == [ours]


def test_a_replay_goes_only_to_a_handler_its_service_subscribes_on_that_handler_s_queue(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # Given billing registered, and two of its dead letters edited: one pointing at the
    # orders queue, one at a handler of another service
    register(BILLING, ORDERS)
    queue_edited = add(redis_client, "billing", "billing.charge", "events.orders")
    handler_edited = add(redis_client, "billing", "orders.welcome_order", "events.orders")

    # When the operator replays them
    refused = eventbus("dead-letters", "replay", handler_edited)
    replayed = eventbus("dead-letters", "replay", queue_edited)

    # Then the one for a handler billing does not subscribe is refused with exit 2
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    assert "Service 'billing' does not subscribe a handler 'orders.welcome_order'" in refused.stderr
    # And the other goes to billing.charge on billing's own queue, not the stored one
    assert replayed.returncode == 0, replayed.stderr
    assert redis_client.llen("events.orders") == 0
    [raw] = redis_client.lrange("events.billing", 0, -1)
    assert json.loads(raw)["headers"]["task"] == "billing.charge"
    assert [lt["id"] for lt in listed()] == [handler_edited]
