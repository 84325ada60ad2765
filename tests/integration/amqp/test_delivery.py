"""RabbitMQ: retries go back to the handler's own queue alone (long ones through RabbitMQ's
native delayed delivery), a poison message and a foreign task become dead letters."""

from __future__ import annotations

from collections.abc import Callable

import redis
from celery import Celery
from kombu import Connection

from celery_events import EventBus
from celery_events.backends.amqp.topology import retry_token

from ...harness import Worker, wait_until
from .conftest import Rabbit, records


def _dead(rabbit: Rabbit, service: str) -> list[object]:
    ops = EventBus(Celery(f"{service}-ops", broker=rabbit.url), service=service,
                   registry_url=rabbit.state_url)
    try:
        return list(ops.dead_letters.list(limit=None))
    finally:
        ops.close()


def test_a_retry_goes_to_its_own_queue_only(
    publisher: EventBus, start_rabbit_worker: Callable[..., Worker], redis_client: redis.Redis
) -> None:
    # Given two services whose `seen` handlers both fail twice before they succeed
    start_rabbit_worker(RABBIT_SERVICE="alpha")
    start_rabbit_worker(RABBIT_SERVICE="beta")
    # When one event is published
    result = publisher.publish("shop.thing", {"fail": 2})
    ids = {d.handler: d.task_id for d in result.deliveries}
    wait_until(lambda: len(records(redis_client, "test:effects")) == 2, timeout=30,
               what="both handlers' effects")
    # Then each handler ran exactly three times (no retry reached the other's queue), all
    # under its delivery's task id, and its retries came through the retry exchange with its
    # own queue's token
    runs = records(redis_client, "test:runs")
    for handler, queue in (("alpha.seen", "events.alpha.seen"), ("beta.seen", "events.beta.seen")):
        mine = [r for r in runs if r["handler"] == handler]
        assert len(mine) == 3, runs
        assert {r["task_id"] for r in mine} == {ids[handler]}
        assert [r["retries"] for r in mine] == [0, 1, 2]
        assert mine[0]["exchange"] == "celery_events"
        assert mine[0]["routing_key"] == "shop.thing"
        for retry in mine[1:]:
            assert retry["exchange"] == "celery_events.retry"
            assert retry["routing_key"] == retry_token(queue)
    assert sorted(str(e["handler"]) for e in records(redis_client, "test:effects")) == [
        "alpha.seen", "beta.seen"
    ]


def test_a_long_retry_on_quorum_waits_in_rabbitmq(
    publisher: EventBus, start_rabbit_worker: Callable[..., Worker], redis_client: redis.Redis
) -> None:
    # Given a handler that asks to be retried in 3 s
    start_rabbit_worker(RABBIT_SERVICE="alpha")
    publisher.publish("shop.thing", {"later": 3})
    wait_until(lambda: records(redis_client, "test:effects"), timeout=30, what="the effect")
    # Then its retry came back through Celery's native delayed delivery (the TTL queues of
    # celery_delayed_*), to this queue alone, after at least 3 s
    first, second = records(redis_client, "test:runs")
    assert second["exchange"] == "celery_delayed_delivery"
    assert str(second["routing_key"]).endswith("." + retry_token("events.alpha.seen"))
    assert float(str(second["t"])) - float(str(first["t"])) >= 3.0
    assert second["task_id"] == first["task_id"]


def test_a_message_that_kills_its_worker_becomes_a_dead_letter(
    rabbit: Rabbit,
    publisher: EventBus,
    start_rabbit_worker: Callable[..., Worker],
    redis_client: redis.Redis,
) -> None:
    # Given a handler whose pool process dies on the event, every time (max_deliveries=2)
    start_rabbit_worker(RABBIT_SERVICE="alpha")
    result = publisher.publish("shop.thing", {"poison": True})
    task_id = next(d.task_id for d in result.deliveries if d.handler == "alpha.seen")
    # Then after max_deliveries starts it is a dead letter, and nothing took effect
    wait_until(lambda: _dead(rabbit, "alpha"), timeout=60, what="a dead letter")
    (letter,) = _dead(rabbit, "alpha")
    assert letter.reason == "too_many_deliveries"  # type: ignore[attr-defined]
    assert letter.task_id == task_id  # type: ignore[attr-defined]
    assert letter.handler == "alpha.seen"  # type: ignore[attr-defined]
    assert records(redis_client, "test:effects") == []


def test_a_foreign_task_on_an_event_queue_is_dead_lettered_not_run(
    rabbit: Rabbit,
    publisher: EventBus,
    start_rabbit_worker: Callable[..., Worker],
    redis_client: redis.Redis,
) -> None:
    # Given a worker of service alpha
    start_rabbit_worker(RABBIT_SERVICE="alpha")
    event = publisher.new_event("shop.order.created", {"n": 1})
    envelope = event.to_envelope()
    # When someone sends alpha's *other* handler's task, and a task of no handler, to the
    # queue of alpha.seen
    # (With confirms: a connection closed right after two unconfirmed publishes can lose the
    # second when the broker is loaded, and the test would wait for a message never sent.)
    with Connection(rabbit.url, transport_options={"confirm_publish": True}) as connection:
        producer = connection.Producer()
        for task in ("alpha.orders", "evil.task"):
            producer.publish(
                [[envelope], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}],
                exchange="",
                routing_key="events.alpha.seen",
                serializer="json",
                headers={"lang": "py", "task": task, "id": f"foreign-{task}", "retries": 0,
                         "timelimit": [None, None], "root_id": None, "parent_id": None,
                         "argsrepr": "", "kwargsrepr": "", "origin": "test"},
            )
    # Then both become dead letters of alpha.seen's queue, and neither ran
    wait_until(lambda: len(_dead(rabbit, "alpha")) == 2, timeout=30, what="two dead letters")
    letters = _dead(rabbit, "alpha")
    assert {letter.reason for letter in letters} == {"unknown_handler"}  # type: ignore[attr-defined]
    assert {letter.queue for letter in letters} == {"events.alpha.seen"}  # type: ignore[attr-defined]
    assert {letter.task_id for letter in letters} == {"foreign-alpha.orders", "foreign-evil.task"}  # type: ignore[attr-defined]
    assert records(redis_client, "test:runs") == []
    assert records(redis_client, "test:effects") == []


def test_a_dead_letter_replays_to_its_handlers_queue_alone(
    rabbit: Rabbit,
    publisher: EventBus,
    start_rabbit_worker: Callable[..., Worker],
    redis_client: redis.Redis,
) -> None:
    # Given a delivery of alpha.seen that failed four times (max_retries=3): a dead letter;
    # beta.seen, subscribed to the same event, failed the same way
    start_rabbit_worker(RABBIT_SERVICE="alpha")
    start_rabbit_worker(RABBIT_SERVICE="beta")
    publisher.publish("shop.thing", {"fail": 4})
    wait_until(lambda: _dead(rabbit, "alpha") and _dead(rabbit, "beta"), timeout=60,
               what="both dead letters")
    (letter,) = _dead(rabbit, "alpha")
    assert letter.reason == "retries_exhausted"  # type: ignore[attr-defined]
    assert letter.queue == "events.alpha.seen"  # type: ignore[attr-defined]
    # When alpha's operator replays it
    ops = EventBus(Celery("alpha-ops", broker=rabbit.url), service="alpha",
                   registry_url=rabbit.state_url)
    ops.dead_letters.replay(letter.id)  # type: ignore[attr-defined]
    ops.close()
    # Then alpha.seen runs once more and takes effect; beta's handler does not run again
    wait_until(lambda: records(redis_client, "test:effects"), timeout=30, what="the effect")
    runs = records(redis_client, "test:runs")
    assert len([r for r in runs if r["handler"] == "alpha.seen"]) == 5
    assert len([r for r in runs if r["handler"] == "beta.seen"]) == 4
    assert [e["handler"] for e in records(redis_client, "test:effects")] == ["alpha.seen"]
