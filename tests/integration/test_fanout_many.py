"""Many events in one fan-out script call (``RedisFanout.send_many``, under
``bus.publish_many``): every delivery of every event is queued, each payload byte for byte
what ``send_task`` stores, or nothing of any event is; and the ledger entries the script
joins (new format) and those written before it (JSON) are both swept.

Real redis-server, real Redis 7 ACL users.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from celery_events import EventBus, PublishError
from celery_events._messages import (
    SentEvents,
    TaskMessage,
    build_messages,
    encode_body,
    redis_payload,
)
from celery_events.backends.redis.fanout import MAX_DELIVERIES
from celery_events.backends.redis.ledger import Ledger, ledger_entry, read_ledger_entry

from .test_publish_refused import PASSWORD, snapshot

QUEUES = {"orders": "events.orders", "mailer": "events.mailer", "vault": "events.vault"}


def outgoing(
    bus: EventBus, name: str, data: dict[str, object], services: list[str]
) -> tuple[list[TaskMessage], tuple[str, str] | None]:
    """One event's deliveries to ``services``, as the publish path builds them."""
    envelope = bus.new_event(name, data).to_envelope()
    head = {k: v for k, v in envelope.items() if k != "data"}
    messages = build_messages(
        bus.app,
        envelope,
        encode_body(head, json.dumps(data)),
        [(f"{s}.on_{name}", QUEUES[s], f"{name} → {s}.on_{name}", s) for s in services],
        parent_id=None,
        root_id=None,
    )
    return messages, (f"shop {name}", "1.0")


def evalsha_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


@pytest.fixture
def shop(redis_url: str) -> Iterator[EventBus]:
    bus = EventBus(Celery("shop", broker=redis_url), service="shop", publish_timeout=1.0)
    yield bus
    bus.close()


def test_three_events_go_out_in_one_script_call_each_delivery_as_send_task_stores_it(
    shop: EventBus, redis_client: redis.Redis
) -> None:
    # Given three events, to two, one and three subscribers
    batches = [
        outgoing(
            shop, "user.registered", {"user_id": 1, "name": 'Zoë\'s "x"'}, ["orders", "mailer"]
        ),
        outgoing(shop, "user.left", {"user_id": 2}, ["mailer"]),
        outgoing(shop, "order.paid", {"n": [1, 2.5, None]}, ["orders", "mailer", "vault"]),
    ]
    redis_client.script_load(shop.transport.script.script)
    calls = evalsha_calls(redis_client)

    # When they are sent together
    shop.transport.send_many(batches)

    # Then it took one script call
    assert evalsha_calls(redis_client) == calls + 1
    # And every queue holds, oldest first, exactly the payload send_task would store, and
    # every delivery's ledger entry holds that payload
    for queue in QUEUES.values():
        expected = [redis_payload(m) for ms, _ in batches for m in ms if m.queue == queue]
        assert [p.decode() for p in reversed(redis_client.lrange(queue, 0, -1))] == expected
    for messages, _ in batches:
        for m in messages:
            entry = redis_client.hget(f"celery_events:ledger:{m.service}", m.task_id)
            assert entry == ledger_entry(
                QUEUES[m.service], redis_payload(m), m.event_id, m.task_name
            )
            assert redis_client.zscore(f"celery_events:ledger:{m.service}:due", m.task_id)
    # And the catalog records each event's name
    catalog = redis_client.hgetall("celery_events:published")
    assert {b"shop user.registered", b"shop user.left", b"shop order.paid"} <= set(catalog)


def test_the_task_sent_events_of_a_call_decode_to_celerys_events(
    shop: EventBus, redis_client: redis.Redis
) -> None:
    # Given someone listening to Celery's event exchange, as Flower's event receiver does
    events = SentEvents(shop.app, 0)
    listener = redis_client.pubsub()
    listener.psubscribe("/0.celeryev/*")
    assert listener.get_message(timeout=5)["type"] == "psubscribe"
    batches = [
        outgoing(shop, "user.registered", {"text": "a" * n}, ["orders", "mailer"]) for n in range(4)
    ]

    # When four events (arguments of four lengths: every padding) go out together
    shop.transport.send_many(batches)

    # Then each event's deliveries are heard of in one task.multi message, whose body decodes,
    # as kombu decodes it, to the list of Celery's task-sent events of its deliveries
    heard = []
    while len(heard) < 4:
        message = listener.get_message(timeout=5)
        assert message is not None, f"heard {len(heard)} of 4 task-sent messages"
        assert message["channel"] == events.multi_channel.encode()
        heard.append(json.loads(message["data"]))
    listener.close()
    for wrapper, (messages, _) in zip(heard, batches, strict=True):
        body = json.loads(base64.b64decode(wrapper["body"]))
        assert [e["uuid"] for e in body] == [m.task_id for m in messages]
        for event, m in zip(body, messages, strict=True):
            assert event == events.event(m, event["clock"], event["timestamp"])
        assert wrapper["properties"]["delivery_info"]["routing_key"] == "task.multi"


def test_a_user_refused_on_one_queue_of_the_third_event_gets_nothing_of_any_event_queued(
    acl_user, shop: EventBus, redis_client: redis.Redis, redis_server
) -> None:
    # Given a publisher whose Redis user may write every queue but the vault's
    url = acl_user("shop", "~events.orders", "~events.mailer", "~celery_events:*", "+@all", "&*")
    bus = EventBus(Celery("shop", broker=url), service="shop", publish_timeout=1.0)
    batches = [
        outgoing(bus, "user.registered", {"user_id": 1}, ["orders", "mailer"]),
        outgoing(bus, "user.left", {"user_id": 2}, ["mailer"]),
        outgoing(bus, "order.paid", {"n": 3}, ["orders", "vault"]),
    ]
    before = snapshot(redis_client)
    try:
        # When it sends three events, the third to the vault too
        with pytest.raises(PublishError) as caught:
            bus.transport.send_many(batches)
    finally:
        bus.close()
    # Then the error names the queue and says nothing was sent, and nothing was
    message = str(caught.value)
    assert "events.vault" in message and "No delivery was sent" in message
    assert snapshot(redis_client) == before


def test_a_wrong_typed_ledger_of_the_third_event_leaves_nothing_of_any_event(
    shop: EventBus, redis_client: redis.Redis
) -> None:
    # Given the vault's ledger is a string
    redis_client.set("celery_events:ledger:vault:due", "not a sorted set")
    batches = [
        outgoing(shop, "user.registered", {"user_id": 1}, ["orders", "mailer"]),
        outgoing(shop, "user.left", {"user_id": 2}, ["mailer"]),
        outgoing(shop, "order.paid", {"n": 3}, ["orders", "vault"]),
    ]
    before = snapshot(redis_client)

    # When three events are sent, the third to the vault too
    with pytest.raises(PublishError, match="WRONGTYPE") as caught:
        shop.transport.send_many(batches)

    # Then nothing of any of them is queued, recorded or in the catalog
    assert "No delivery was sent" in str(caught.value)
    assert snapshot(redis_client) == before


def test_a_call_too_large_for_one_script_is_refused_whole(
    shop: EventBus, redis_client: redis.Redis
) -> None:
    # Given more deliveries than one script call takes
    per_event = 100
    batches = [
        outgoing(shop, "user.registered", {"i": i}, ["orders"])
        for i in range(MAX_DELIVERIES // per_event)
    ]
    many = [(messages * per_event, catalog) for messages, catalog in batches]
    many.append(outgoing(shop, "user.left", {}, ["mailer"]))
    before = snapshot(redis_client)

    # When they are sent in one call
    with pytest.raises(PublishError) as caught:
        shop.transport.send_many(many)

    # Then the error says how much is too much and what to do, and nothing was sent
    message = str(caught.value)
    assert f"{MAX_DELIVERIES + 1} deliveries" in message and "smaller calls" in message
    assert snapshot(redis_client) == before


@pytest.fixture
def acl_user(redis_server, redis_client: redis.Redis) -> Iterator[object]:
    made: list[str] = []

    def make(name: str, *rules: str) -> str:
        redis_client.execute_command("ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}", *rules)
        made.append(name)
        return f"redis://{name}:{PASSWORD}@127.0.0.1:{redis_server.port}/0"

    yield make
    for name in made:
        redis_client.execute_command("ACL", "DELUSER", name)


# -- the ledger's two formats -----------------------------------------------------------------


def test_the_sweep_resends_entries_of_both_formats_and_gives_up_both_alike(
    redis_client: redis.Redis,
) -> None:
    # Given two lost deliveries of the flaky service, overdue: one recorded by this fan-out,
    # one by the one before it (JSON), and an entry of the new format cut short
    payload = json.dumps({"body": "e30=", "headers": {"id": "t-new"}})
    old_payload = json.dumps({"body": "e30=", "headers": {"id": "t-old"}})
    ledger = Ledger(redis_client, "flaky", "celery_events:")
    redis_client.hset(
        ledger.ledger_key, "t-new", ledger_entry("events.flaky", payload, "e1", "flaky.work")
    )
    # (in another queue: the sweep postpones a delivery whose queue is not empty)
    old = {"q": "events.flaky.old", "m": old_payload, "e": "e2", "h": "flaky.work", "r": 0}
    redis_client.hset(ledger.ledger_key, "t-old", json.dumps(old))
    redis_client.hset(
        ledger.ledger_key, "t-cut", ledger_entry("events.flaky", payload, "e3", "f.w")[:12]
    )
    redis_client.zadd(ledger.due_key, {"t-new": 0, "t-old": 0, "t-cut": 0})

    def sweep(max_redeliveries: int):
        redis_client.zadd(ledger.due_key, {"t-new": 0, "t-old": 0}, xx=True)
        return ledger.sweep(
            unacked_key="unacked",
            redelivery_timeout=1.0,
            max_redeliveries=max_redeliveries,
            postpone=1.0,
        )

    # When the sweeper runs
    first = sweep(max_redeliveries=1)

    # Then both lost deliveries are queued again, each as it was recorded
    assert first.resent == 2
    assert redis_client.lrange("events.flaky", 0, -1) == [payload.encode()]
    assert redis_client.lrange("events.flaky.old", 0, -1) == [old_payload.encode()]
    # And the entry cut short is handed back raw, and is out of the ledger
    assert [task_id for task_id, _ in first.unreadable] == ["t-cut"]
    assert redis_client.hexists(ledger.ledger_key, "t-cut") == 0
    # And both entries now count one redelivery, in the new format
    for task_id, event_id in (("t-new", "e1"), ("t-old", "e2")):
        entry = read_ledger_entry(redis_client.hget(ledger.ledger_key, task_id))
        assert entry is not None and (entry["e"], entry["r"]) == (event_id, 1)

    # When they are lost again, and the sweeper runs with one redelivery allowed
    redis_client.delete("events.flaky", "events.flaky.old")
    second = sweep(max_redeliveries=1)

    # Then both are given up with their whole record, for the dead letters
    assert second.resent == 0
    assert sorted((e["e"], e["m"], e["q"], e["h"], e["r"]) for e in second.given_up) == [
        ("e1", payload, "events.flaky", "flaky.work", 1),
        ("e2", old_payload, "events.flaky.old", "flaky.work", 1),
    ]
    assert redis_client.hlen(ledger.ledger_key) == 0 == redis_client.zcard(ledger.due_key)


def test_a_ledger_entry_reads_back_whatever_its_names_hold() -> None:
    # Given names with colons, digits and non-ASCII letters
    raw = ledger_entry("pre:events.ü:1", '{"a": ":"}', "e:1", "h:2")

    # Then it reads back as it was written, and anything cut or foreign reads as nothing
    assert read_ledger_entry(raw) == {
        "q": "pre:events.ü:1",
        "m": '{"a": ":"}',
        "e": "e:1",
        "h": "h:2",
        "r": 0,
    }
    header = len(raw) - len(b'{"a": ":"}')
    assert all(read_ledger_entry(raw[:cut]) is None for cut in range(1, header))
    assert read_ledger_entry(b"\x01x:events") is None
    assert read_ledger_entry(b"not json") is None
    assert read_ledger_entry(json.dumps({"q": "a"}).encode()) == {"q": "a"}
