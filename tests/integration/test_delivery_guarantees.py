"""Retries, dead letters, the inbox, poison messages and unreadable input, with real workers."""

from __future__ import annotations

import base64
import json
import os
import pickle
import signal
import time
from pathlib import Path

import pytest
import redis
from celery import Celery

from celery_events import DeadLetterNotFound, EventBus, PublishResult

from ..harness import wait_until
from .conftest import effect_counts, effects

FLAKY = "tests.services.flaky"


def handled(client: redis.Redis, result: PublishResult, handler: str = "flaky.work") -> int:
    return effect_counts(client)[(handler, result.event.id)]


def dead_bus(redis_url: str) -> EventBus:
    """The flaky service's bus as an operator's shell would hold it."""
    return EventBus(Celery("flaky-ops", broker=redis_url), service="flaky")


def test_a_failing_handler_is_retried_with_celery_retry_then_succeeds(
    start_worker, publisher: EventBus, redis_client: redis.Redis
) -> None:
    worker = start_worker(FLAKY)
    result = publisher.publish("work.pay", {"fail_times": 2})
    wait_until(lambda: handled(redis_client, result) == 1)
    [effect] = [e for e in effects(redis_client) if e["handler"] == "flaky.work"]
    assert effect["retries"] == 2  # Celery's own retry count on the same delivery
    task_id = next(d.task_id for d in result.deliveries if d.handler == "flaky.work")
    log = worker.log()
    assert log.count(f"[{task_id}] retry: Retry in") == 2
    assert "work.pay → flaky.work" in log


def test_a_handler_gets_every_retry_it_asked_for_beyond_celerys_default_limit(
    start_worker, publisher: EventBus, redis_client: redis.Redis, redis_url: str
) -> None:
    # Celery's tasks allow 3 retries unless told otherwise; a 4th raised the handler's error
    # and the delivery was acked with no dead letter.
    start_worker(FLAKY)
    result = publisher.publish("persist.order", {"order_id": 9})
    ops = dead_bus(redis_url)
    wait_until(lambda: ops.dead_letters.count() == 1, timeout=30)
    [letter] = ops.dead_letters.list(handler="flaky.persist")
    assert (letter.reason, letter.attempts) == ("retries_exhausted", 6)
    assert letter.event_id == result.event.id
    assert redis_client.llen(f"test:started:{result.event.id}") == 6


def test_retries_exhausted_become_a_dead_letter_that_can_be_replayed(
    start_worker, publisher: EventBus, redis_client: redis.Redis, redis_url: str
) -> None:
    start_worker(FLAKY)
    result = publisher.publish("work.pay", {"broken": True})
    # (the handler is broken for this event until the flag is cleared)
    redis_client.set(f"test:broken:{result.event.id}", 1)
    ops = dead_bus(redis_url)
    wait_until(lambda: ops.dead_letters.count() == 1, timeout=30)
    [letter] = ops.dead_letters.list(handler="flaky.work")
    assert letter.reason == "retries_exhausted"
    assert letter.event_id == result.event.id and letter.event_name == "work.pay"
    assert letter.envelope is not None and letter.envelope["data"] == {"broken": True}
    assert letter.error_type == "ValueError"
    assert "broken for this event" in letter.error_message
    assert letter.traceback and "Traceback" in letter.traceback
    assert letter.attempts == 4  # the first run and max_retries=3 retries
    assert letter.first_failed_at < letter.last_failed_at
    assert letter.hostname and letter.hostname.startswith("celery@")
    assert ops.dead_letters.get(letter.id) == letter
    assert ops.dead_letters.list(event_name="other.name") == []

    # When the cause is fixed and the dead letter replayed
    redis_client.delete(f"test:broken:{result.event.id}")
    assert [r.id for r in ops.dead_letters.replay(letter.id)] == [letter.id]

    # Then the handler gets a fresh delivery of the same event, and the record is gone
    wait_until(lambda: handled(redis_client, result) == 1)
    assert ops.dead_letters.count() == 0
    with pytest.raises(DeadLetterNotFound, match=letter.id):
        ops.dead_letters.get(letter.id)
    ops.close()


def test_reject_goes_straight_to_dead_letters_and_dont_retry_for_is_honoured(
    start_worker, publisher: EventBus, redis_url: str, redis_client: redis.Redis
) -> None:
    start_worker(FLAKY)
    rejected = publisher.publish("work.cancel", {"reject": True})
    bad = publisher.publish("work.bad", {"bad_key": True})
    ops = dead_bus(redis_url)
    wait_until(lambda: ops.dead_letters.count() == 3, timeout=30)
    [letter] = ops.dead_letters.list(event_name="work.cancel")
    assert (letter.reason, letter.attempts, letter.error_type) == ("rejected", 1, "Reject")
    assert letter.error_message == "the order is cancelled"
    [no_retry] = ops.dead_letters.list(event_name="work.bad", handler="flaky.work_no_inbox")
    assert (no_retry.reason, no_retry.attempts) == ("not_retried", 1)
    [retried] = ops.dead_letters.list(event_name="work.bad", handler="flaky.work")
    assert (retried.reason, retried.attempts) == ("retries_exhausted", 4)
    assert redis_client.get(f"test:failures:{rejected.event.id}") is None
    assert ops.dead_letters.purge(event_name="work.bad") == 2
    assert [d.event_id for d in ops.dead_letters.list()] == [rejected.event.id]
    assert bad.event.id not in {d.event_id for d in ops.dead_letters.list()}
    ops.close()


def test_a_handler_asking_for_a_retry_is_not_logged_as_an_error(
    start_worker, publisher: EventBus, redis_client: redis.Redis
) -> None:
    worker = start_worker(FLAKY)
    result = publisher.publish("work.later", {"retry_delay": 0.2})
    wait_until(lambda: handled(redis_client, result) == 1)
    assert "ERROR" not in worker.log()
    assert "retry: Retry in" in worker.log()


def queued_copy(client: redis.Redis, queue: str, handler: str) -> bytes:
    for item in client.lrange(queue, 0, -1):
        if json.loads(item)["headers"]["task"] == handler:
            return bytes(item)
    raise AssertionError(f"no message for {handler} on {queue}")


def test_a_delivery_already_handled_is_skipped(
    start_worker, publisher: EventBus, redis_client: redis.Redis
) -> None:
    # Given a delivery that was handled once
    start_worker(FLAKY).stop()
    result = publisher.publish("work.once", {"also_no_inbox": True})
    copy = queued_copy(redis_client, "events.flaky", "flaky.work")
    copy_no_inbox = queued_copy(redis_client, "events.flaky", "flaky.work_no_inbox")
    worker = start_worker(FLAKY)
    wait_until(lambda: handled(redis_client, result) == 1)
    wait_until(lambda: handled(redis_client, result, "flaky.work_no_inbox") == 1)

    # When the same message arrives again (a redelivery after a lost ack)
    redis_client.lpush("events.flaky", copy, copy_no_inbox)

    # Then the inbox skips it and acks it; the handler without inbox runs again
    wait_until(lambda: "already handled event" in worker.log())
    wait_until(lambda: handled(redis_client, result, "flaky.work_no_inbox") == 2)
    assert handled(redis_client, result) == 1
    assert redis_client.llen("events.flaky") == 0
    assert redis_client.hlen("unacked") == 0


def test_two_copies_running_at_once_run_the_handler_once(
    start_worker, publisher: EventBus, redis_client: redis.Redis
) -> None:
    start_worker(FLAKY).stop()
    result = publisher.publish("work.slow", {"sleep": 1.5})
    copy = queued_copy(redis_client, "events.flaky", "flaky.work")
    redis_client.lpush("events.flaky", copy)
    start_worker(FLAKY, args=["-c", "3"])
    wait_until(lambda: handled(redis_client, result) == 1, timeout=30)
    wait_until(lambda: redis_client.llen("events.flaky") == 0 and redis_client.hlen("unacked") == 0,
               timeout=30)
    assert redis_client.llen(f"test:started:{result.event.id}") == 1
    assert handled(redis_client, result) == 1


def test_killing_the_pool_process_mid_handler_redelivers_and_the_effect_happens_once(
    start_worker, publisher: EventBus, redis_client: redis.Redis
) -> None:
    worker = start_worker(FLAKY)
    result = publisher.publish("work.slow", {"sleep": 2})
    started = f"test:started:{result.event.id}"
    pid = int(wait_until(lambda: redis_client.lindex(started, 0)))
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: handled(redis_client, result) == 1, timeout=30)
    assert redis_client.llen(started) == 2
    assert worker.process.poll() is None


def test_a_poison_message_that_kills_its_worker_is_dead_lettered_not_looped(
    start_worker, publisher: EventBus, redis_client: redis.Redis, redis_url: str
) -> None:
    worker = start_worker(FLAKY)
    result = publisher.publish("work.poison", {"crash": True})
    ops = dead_bus(redis_url)
    wait_until(lambda: ops.dead_letters.count(handler="flaky.work") == 1, timeout=60)
    [letter] = ops.dead_letters.list(handler="flaky.work")
    assert letter.reason == "too_many_deliveries"
    assert letter.error_type == "PoisonMessageError"
    assert letter.attempts == 3 and letter.event_id == result.event.id
    assert redis_client.llen(f"test:started:{result.event.id}") == 3
    # The worker survived and still handles events
    after = publisher.publish("work.after", {})
    wait_until(lambda: handled(redis_client, after) == 1)
    assert worker.process.poll() is None
    ops.close()


def test_unreadable_items_on_a_service_queue_become_dead_letters_and_the_worker_lives_on(
    start_worker, publisher: EventBus, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    worker = start_worker(FLAKY)
    marker = tmp_path / "unpickled"

    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    good = json.loads(flaky_message(publisher))
    garbage = b"\x00\xffnot json at all"
    not_celery = json.dumps({"hello": "world"}).encode()
    unknown = dict(good, headers=dict(good["headers"], task="flaky.nobody", id="t-unknown"))
    pickled = dict(
        good,
        headers=dict(good["headers"], id="t-pickle"),
        **{"content-type": "application/x-python-serialize"},
        body=base64.b64encode(pickle.dumps(Boom())).decode(),
    )
    bad_envelope = dict(
        good,
        headers=dict(good["headers"], id="t-envelope"),
        body=base64.b64encode(
            json.dumps([[{"id": "x", "type": "Not A Name"}], {}, {}]).encode()
        ).decode(),
    )
    for item in (garbage, not_celery, json.dumps(unknown), json.dumps(pickled),
                 json.dumps(bad_envelope)):
        redis_client.lpush("events.flaky", item)

    ops = dead_bus(redis_url)
    wait_until(lambda: ops.dead_letters.count() == 5, timeout=30)
    letters = {letter.task_id or letter.raw: letter for letter in ops.dead_letters.list()}
    assert letters[garbage].reason == "unreadable_message"
    assert letters[not_celery].reason == "unreadable_message"
    assert letters["t-unknown"].reason == "unknown_handler"
    assert letters["t-pickle"].reason == "unreadable_message"
    assert "not deserialized" in letters["t-pickle"].error_message
    assert letters["t-envelope"].reason == "invalid_envelope"
    assert letters["t-envelope"].handler == "flaky.work"
    assert not marker.exists()

    # And the worker still handles the next event
    after = publisher.publish("work.after", {})
    wait_until(lambda: handled(redis_client, after) == 1)
    assert worker.process.poll() is None
    assert "Unrecoverable error" not in worker.log()
    ops.close()


def flaky_message(publisher: EventBus) -> bytes:
    """A well-formed message for flaky.work, to take apart."""
    from celery_events._messages import build_messages, encode_body, redis_payload
    from celery_events.envelope import Event

    event = Event.create("work.template", {}, source="test")
    envelope = event.to_envelope()
    head = {k: v for k, v in envelope.items() if k != "data"}
    [message] = build_messages(
        publisher.app, envelope, encode_body(head, "{}"),
        [("flaky.work", "events.flaky", "work.template → flaky.work", "flaky")],
        parent_id=None, root_id=None,
    )
    return redis_payload(message).encode()


def test_a_delivery_lost_between_queue_and_worker_is_sent_again(
    start_worker, publisher: EventBus, redis_client: redis.Redis
) -> None:
    # Given a delivery that vanished from its queue before any worker recorded it
    start_worker(FLAKY).stop()
    result = publisher.publish("work.lost", {})
    for item in redis_client.lrange("events.flaky", 0, -1):
        if json.loads(item)["headers"]["task"] == "flaky.work":
            redis_client.lrem("events.flaky", 1, item)

    # When the service's worker runs
    worker = start_worker(FLAKY)

    # Then its sweeper finds the delivery in the ledger and sends it again, once
    wait_until(lambda: handled(redis_client, result) == 1, timeout=30)
    assert "lost delivery(ies) of service 'flaky' again" in worker.log()
    assert redis_client.hlen("celery_events:ledger:flaky") == 0


def test_workers_resume_after_a_redis_restart(
    start_worker, publisher: EventBus, redis_client: redis.Redis, redis_server
) -> None:
    worker = start_worker(FLAKY)
    before = publisher.publish("work.before", {})
    wait_until(lambda: handled(redis_client, before) == 1)

    redis_server.restart()
    restarted = time.monotonic()
    after = wait_until(lambda: _try_publish(publisher), timeout=10)
    wait_until(lambda: handled(redis_server.client(), after) == 1, timeout=10)
    assert time.monotonic() - restarted < 10
    assert handled(redis_server.client(), before) == 1  # nothing acknowledged was lost
    assert worker.process.poll() is None


def _try_publish(publisher: EventBus) -> PublishResult | None:
    from celery_events import PublishError

    try:
        return publisher.publish("work.after", {})
    except PublishError:
        return None
