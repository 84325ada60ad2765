"""What lands on an event queue can never stop a worker, and only the subscribed handler runs.

Every bad item is one field of a valid delivery replaced (``tests/screening_items.py``), pushed
straight onto the service's queue as a broken or hostile peer would. Each must become exactly
one dead letter holding its raw bytes, in every worker pool, and the next event is handled.
"""

from __future__ import annotations

import json
import uuid

import pytest
import redis
from celery import Celery

from celery_events import EventBus

from ..harness import wait_until
from ..screening_items import (
    BAD_ITEMS,
    CANARY,
    CANARY_KEY,
    QUEUE,
    RECEIVED_KEY,
    body_of,
    delivery,
    nested,
    with_body,
    with_embed,
    with_header,
)

SCREENED = "tests.services.screened"


@pytest.fixture
def ops(redis_url: str):
    bus = EventBus(Celery("screened-ops", broker=redis_url), service="screened")
    yield bus
    bus.close()


def received(client: redis.Redis) -> dict[str, str]:
    """Event id → repr of the data the handler got."""
    return {
        r["id"]: r["data"] for r in (json.loads(x) for x in client.lrange(RECEIVED_KEY, 0, -1))
    }


def bad_items(app: Celery) -> dict[str, bytes]:
    return {name: json.dumps(make(delivery(app))).encode() for name, make in BAD_ITEMS.items()}


def assert_handles_the_next_event(publisher: EventBus, client: redis.Redis) -> None:
    result = publisher.publish("probe.after", {"n": 1})
    wait_until(lambda: result.event.id in received(client), timeout=30, what="the next event")


@pytest.mark.parametrize("pool", ["prefork", "solo", "threads", "gevent", "eventlet"])
def test_every_bad_item_is_one_dead_letter_with_its_raw_bytes_in_every_pool(
    pool: str, start_worker, publisher: EventBus, ops: EventBus, redis_client: redis.Redis
) -> None:
    worker = start_worker(SCREENED, args=["-P", pool])
    items = bad_items(publisher.app)
    for item in items.values():
        redis_client.lpush(QUEUE, item)

    wait_until(
        lambda: ops.dead_letters.count() >= len(items), timeout=60, what="one letter per item"
    )
    letters = ops.dead_letters.list(limit=None)
    by_raw = {letter.raw: letter for letter in letters}
    missing = [name for name, item in items.items() if item not in by_raw]
    assert missing == []
    assert len(letters) == len(items)
    assert {letter.reason for letter in letters} == {"unreadable_message"}
    assert by_raw[items["callbacks"]].handler == "screened.probe"
    assert "nothing but the handler" in by_raw[items["chain"]].error_message

    assert_handles_the_next_event(publisher, redis_client)
    assert worker.process.poll() is None
    assert "Unrecoverable error" not in worker.log()
    ran = received(redis_client).keys()
    assert ran.isdisjoint(json.loads(items[name])["headers"].get("id") for name in ("kwargs", "chain"))
    assert redis_client.llen(CANARY_KEY) == 0
    # Nothing is left to redeliver, and the sweeper has nothing to send again.
    assert redis_client.llen(QUEUE) == 0
    wait_until(lambda: redis_client.hlen("unacked") == 0, what="no unacked message")


def test_a_quarantined_delivery_leaves_no_ledger_entry_for_the_sweeper(
    start_worker, publisher: EventBus, ops: EventBus, redis_client: redis.Redis
) -> None:
    # Given a published delivery that is corrupted on its way (callbacks added)
    start_worker(SCREENED).stop()
    publisher.publish("probe.item", {"n": 1})
    [queued] = redis_client.lrange(QUEUE, 0, -1)
    message = json.loads(queued)
    task_id = message["headers"]["id"]
    ledger = "celery_events:ledger:screened"
    assert redis_client.hexists(ledger, task_id)
    redis_client.delete(QUEUE)
    bad = json.dumps(with_header(message, "chain", [{"task": "screened.canary"}])).encode()
    redis_client.lpush(QUEUE, bad)

    # When the worker screens it
    start_worker(SCREENED)
    wait_until(lambda: ops.dead_letters.count() == 1)

    # Then its bookkeeping is gone with it: nothing sends it again later
    [letter] = ops.dead_letters.list()
    assert letter.raw == bad and letter.task_id == task_id
    assert not redis_client.hexists(ledger, task_id)
    assert redis_client.llen(CANARY_KEY) == 0


def test_handlers_receive_exactly_the_json_that_was_published(
    start_worker, publisher: EventBus, ops: EventBus, redis_client: redis.Redis
) -> None:
    start_worker(SCREENED)
    data = {
        "when": {"__type__": "datetime", "__value__": "2020-01-01T00:00:00"},
        "day": {"__type__": "date", "__value__": "2020-01-01"},
        "raw": {"__type__": "bytes", "__value__": "aGVsbG8=", "bytes_encoding": "base64"},
        "uid": {"__type__": "uuid", "__value__": str(uuid.UUID(int=1))},
        "odd": {"__type__": "no-such-tag", "__value__": 1},
    }
    result = publisher.publish("probe.tags", data)
    wait_until(lambda: result.event.id in received(redis_client), timeout=30)
    assert received(redis_client)[result.event.id] == repr(data)
    assert ops.dead_letters.count() == 0


def test_the_users_own_queues_keep_kombus_decoding(
    start_worker, publisher: EventBus, redis_client: redis.Redis
) -> None:
    # A task of the user's (the canary, on Celery's default queue) may rely on kombu's tags.
    start_worker(SCREENED)
    publisher.app.send_task(
        "screened.canary", args=[{"__type__": "datetime", "__value__": "2020-01-01T00:00:00"}]
    )
    wait_until(lambda: redis_client.llen(CANARY_KEY) == 1)
    assert redis_client.lindex(CANARY_KEY, 0) == (
        b"((datetime.datetime(2020, 1, 1, 0, 0),), {})"
    )


def test_a_bad_item_on_the_users_own_queue_is_a_dead_letter_and_the_worker_lives_on(
    start_worker, publisher: EventBus, ops: EventBus, redis_client: redis.Redis
) -> None:
    worker = start_worker(SCREENED)
    template = delivery(publisher.app)
    template["headers"]["task"] = "screened.canary"
    template["properties"]["delivery_info"] = {"exchange": "", "routing_key": "celery"}
    items = [
        json.dumps(with_header(template, "id", {"a": 1})).encode(),
        json.dumps(with_header(template, "timelimit", "soon")).encode(),
        json.dumps(dict(template, properties={"delivery_tag": "x"})).encode(),
    ]
    for item in items:
        redis_client.lpush("celery", item)
    wait_until(lambda: ops.dead_letters.count() == len(items), timeout=30)
    assert {letter.raw for letter in ops.dead_letters.list()} == set(items)
    assert_handles_the_next_event(publisher, redis_client)
    assert worker.process.poll() is None
    assert redis_client.llen(CANARY_KEY) == 0


def test_retries_sent_by_celery_pass_the_screen(
    start_worker, publisher: EventBus, ops: EventBus, redis_client: redis.Redis
) -> None:
    # Celery's Task.retry re-sends the delivery with its own headers (an eta among them).
    worker = start_worker(SCREENED, env={"SCREENED_MAX_RETRIES": "2"})
    result = publisher.publish("probe.fail", {"fail_once": True})
    wait_until(lambda: result.event.id in received(redis_client), timeout=30)
    assert "retry: Retry in" in worker.log()
    assert ops.dead_letters.count() == 0


def test_deep_data_is_refused_before_the_pool_but_the_limit_itself_passes(
    start_worker, publisher: EventBus, ops: EventBus, redis_client: redis.Redis
) -> None:
    # The screened service's max_event_depth is 16.
    worker = start_worker(SCREENED)
    deepest = delivery(publisher.app, data_json=json.dumps({"x": nested(15)}))
    too_deep = delivery(publisher.app, data_json=json.dumps({"x": nested(16)}))
    redis_client.lpush(QUEUE, json.dumps(too_deep), json.dumps(deepest))
    wait_until(lambda: ops.dead_letters.count() == 1, timeout=30)
    [letter] = ops.dead_letters.list()
    assert "max_event_depth (16)" in letter.error_message
    assert letter.raw == json.dumps(too_deep).encode()
    wait_until(lambda: len(received(redis_client)) == 1, timeout=30)
    assert list(received(redis_client).values()) == [repr({"x": nested(15)})]
    assert worker.process.poll() is None


def test_without_the_screening_transport_a_delivery_still_runs_nothing_but_its_handler(
    start_worker, publisher: EventBus, ops: EventBus, redis_client: redis.Redis
) -> None:
    # Given a worker on kombu's own Redis transport, which does not screen
    worker = start_worker(SCREENED, env={"SCREENED_STOCK_TRANSPORT": "1"})
    assert "unreadable items on event queues are not screened" in worker.log()
    chained = delivery(publisher.app, {"n": "chained"})
    chained = with_embed(chained, {"callbacks": [CANARY], "errbacks": [CANARY], "chain": [CANARY]})
    extra = delivery(publisher.app, {"n": "kwargs"})
    extra = with_body(extra, [body_of(extra)[0], {"x": 1}, body_of(extra)[2]])
    chained_id = body_of(chained)[0][0]["id"]

    # When deliveries carrying callbacks and a chain, or keyword arguments, arrive
    redis_client.lpush(QUEUE, json.dumps(chained), json.dumps(extra))

    # Then the handler runs alone, and the one it cannot take is a dead letter
    wait_until(lambda: chained_id in received(redis_client), timeout=30)
    wait_until(lambda: ops.dead_letters.count() == 1, timeout=30)
    [letter] = ops.dead_letters.list()
    assert letter.reason == "invalid_envelope"
    assert letter.task_id == extra["headers"]["id"]
    assert "exactly one envelope" in letter.error_message
    assert_handles_the_next_event(publisher, redis_client)
    assert "carried callbacks, errbacks, chain" in worker.log()
    assert redis_client.llen(CANARY_KEY) == 0
