"""The publish fast path sends exactly what Celery's ``app.send_task`` would send.

Messages are compared with ones captured from real ``send_task`` calls to the same queue on the
same Redis, field by field and then byte for byte once the per-call values (task id, delivery
tag, event clock and time) are swapped; real workers run them; Celery's publish signals fire
with the same arguments; and a real event receiver hears the ``task-sent`` events Flower uses.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery, signals

from celery_events import EventBus, Subscription
from celery_events.backends.kombu import KombuTransport
from celery_events.backends.redis.ledger import ledger_entry, read_ledger_entry

from ..harness import wait_until
from .conftest import effect_counts

TRACER = "tests.services.tracer"
REQUESTS_KEY = "test:requests"  # where the tracer service records task requests
ORDERS = "tests.services.orders"
MAILER = "tests.services.mailer"

ORDERS_SUBSCRIPTION = Subscription("user.registered", "orders", "orders.welcome_order", "events.orders")


def decode(raw: bytes) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


def assert_same_message(ours: bytes, theirs: bytes, *, own_root: bool = True) -> None:
    """Every field equal but the per-call ones; then the same bytes once those are swapped."""
    a, b = decode(ours), decode(theirs)
    assert list(a) == list(b)
    assert a["body"] == b["body"]
    assert a["content-type"] == b["content-type"] == "application/json"
    assert a["content-encoding"] == b["content-encoding"] == "utf-8"
    per_call = {"id", "root_id"} if own_root else {"id"}
    assert list(a["headers"]) == list(b["headers"])
    for key, value in a["headers"].items():
        if key not in per_call:
            assert value == b["headers"][key], key
    assert list(a["properties"]) == list(b["properties"])
    for key, value in a["properties"].items():
        if key not in ("correlation_id", "delivery_tag"):
            assert value == b["properties"][key], key
    our_id, their_id = a["headers"]["id"], b["headers"]["id"]
    assert a["properties"]["correlation_id"] == our_id
    if own_root:
        assert a["headers"]["root_id"] == our_id
    swapped = ours.decode().replace(our_id, their_id).replace(
        a["properties"]["delivery_tag"], b["properties"]["delivery_tag"]
    )
    assert swapped == theirs.decode()


def send_task_like(app: Celery, ours: bytes, envelope: dict[str, Any]) -> None:
    """Send ``envelope`` with ``app.send_task`` to the queue and shown name of our message."""
    message = json.loads(ours)
    app.send_task(
        message["headers"]["task"],
        args=[envelope],
        kwargs={},
        queue=message["properties"]["delivery_info"]["routing_key"],
        shadow=message["headers"]["shadow"],
    )


@pytest.fixture
def sent_events_on(publisher: EventBus) -> Iterator[None]:
    publisher.app.conf.task_send_sent_event = True
    yield
    publisher.app.conf.task_send_sent_event = False


class EventListener:
    """A raw subscriber to Celery's event exchange, as kombu's Redis transport publishes it."""

    def __init__(self, client: redis.Redis) -> None:
        self.pubsub = client.pubsub()
        self.pubsub.psubscribe("/0.celeryev/*")
        assert self.pubsub.get_message(timeout=5)["type"] == "psubscribe"

    def next(self) -> tuple[bytes, bytes]:
        message = wait_until(lambda: self.pubsub.get_message(timeout=0.1), timeout=5)
        return message["channel"], message["data"]

    def close(self) -> None:
        self.pubsub.close()


class TaskSentReceiver:
    """Celery's own event receiver (what ``celery events`` and Flower run), in a thread."""

    def __init__(self, app: Celery, client: redis.Redis) -> None:
        self.app = app
        self.events: list[dict[str, Any]] = []
        self.receiver: Any = None
        before = client.execute_command("PUBSUB", "NUMPAT")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_until(
            lambda: client.execute_command("PUBSUB", "NUMPAT") > before,
            what="the event receiver to subscribe",
        )

    def _run(self) -> None:
        with self.app.connection_for_read() as connection:
            self.receiver = self.app.events.Receiver(
                connection, handlers={"task-sent": self.events.append}
            )
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def stop(self) -> None:
        wait_until(lambda: self.receiver is not None)
        self.receiver.should_stop = True
        self.thread.join(timeout=10)


# -- the messages ---------------------------------------------------------------------------


def test_a_delivery_is_byte_for_byte_what_send_task_sends(
    publisher: EventBus, redis_client: redis.Redis
) -> None:
    # Given one subscription
    publisher.registry.register("orders", [ORDERS_SUBSCRIPTION])

    # When the bus publishes an event, and send_task sends the same envelope to the same queue
    result = publisher.publish("user.registered", {"user_id": 7, "name": "Zoë's \"quoted\""})
    ours = redis_client.lpop("events.orders")
    send_task_like(publisher.app, ours, result.event.to_envelope())
    theirs = redis_client.lpop("events.orders")

    # Then the two messages differ only in their task id and delivery tag
    assert_same_message(ours, theirs)
    task_id = result.deliveries[0].task_id
    assert json.loads(ours)["headers"]["id"] == task_id

    # And the delivery ledger holds the record the inbox defines, with the exact message
    record = redis_client.hget("celery_events:ledger:orders", task_id)
    assert record == ledger_entry(
        "events.orders", ours.decode(), result.event.id, "orders.welcome_order"
    )
    assert read_ledger_entry(record) == {
        "q": "events.orders",
        "m": ours.decode(),
        "e": result.event.id,
        "h": "orders.welcome_order",
        "r": 0,
    }
    assert redis_client.zscore("celery_events:ledger:orders:due", task_id) is not None


def test_a_delivery_published_by_a_handler_is_what_send_task_sends_there(
    start_worker, publisher: EventBus, redis_client: redis.Redis
) -> None:
    # Given a sink subscription nobody consumes, and a handler that publishes to it and then
    # sends the same envelope with send_task from inside its worker
    publisher.registry.register(
        "sink", [Subscription("sink.compare", "sink", "sink.record", "events.sink")]
    )
    start_worker(TRACER)

    # When the handler runs
    first = publisher.publish("trace.start", {"compare": "sink.compare"})
    wait_until(lambda: redis_client.llen("events.sink") == 2)

    # Then both messages name the handler's task as parent and the first delivery as root
    ours, theirs = redis_client.rpop("events.sink"), redis_client.rpop("events.sink")
    assert_same_message(ours, theirs, own_root=False)
    headers = json.loads(ours)["headers"]
    assert headers["parent_id"] == headers["root_id"] == first.deliveries[0].task_id


def test_task_sent_events_are_what_send_task_publishes(
    publisher: EventBus, redis_client: redis.Redis, sent_events_on: None
) -> None:
    # Given a listener on Celery's event exchange and one subscription
    listener = EventListener(redis_client)
    publisher.registry.register("orders", [ORDERS_SUBSCRIPTION])

    # When the bus publishes, then send_task sends the same envelope
    result = publisher.publish("user.registered", {"user_id": 7})
    ours = redis_client.lpop("events.orders")
    channel, our_event = listener.next()
    send_task_like(publisher.app, ours, result.event.to_envelope())
    redis_client.lpop("events.orders")
    their_channel, their_event = listener.next()
    listener.close()

    # Then ours is the group of the event's task-sent events (one here) on the task.multi
    # channel, as Celery's dispatcher sends a group; both events differ only in per-call
    # values, and in the name: ours is the delivery's shown name, Celery's the bare task
    # name (and ours has args and kwargs last, the piece every delivery of the event shares)
    assert channel == b"/0.celeryev/task.multi"
    assert their_channel == b"/0.celeryev/task.sent"
    a, b = decode(our_event), decode(their_event)
    assert isinstance(a["body"], list) and len(a["body"]) == 1
    assert a["properties"]["delivery_info"]["routing_key"] == "task.multi"
    a["body"] = a["body"][0]
    a["properties"]["delivery_info"]["routing_key"] = "task.sent"
    assert list(a) == list(b) and sorted(a["body"]) == sorted(b["body"])
    assert list(a["body"])[-2:] == ["args", "kwargs"]
    assert a["headers"] == b["headers"]
    assert a["body"]["name"] == "user.registered → orders.welcome_order"
    assert b["body"]["name"] == "orders.welcome_order"
    per_call = {"uuid", "root_id", "clock", "timestamp", "name"}
    assert {k: v for k, v in a["body"].items() if k not in per_call} == {
        k: v for k, v in b["body"].items() if k not in per_call
    }
    assert a["body"]["uuid"] == a["body"]["root_id"] == result.deliveries[0].task_id
    assert b["body"]["clock"] == a["body"]["clock"] + 1
    assert {k: v for k, v in a["properties"].items() if k != "delivery_tag"} == {
        k: v for k, v in b["properties"].items() if k != "delivery_tag"
    }


def test_the_kombu_fallback_sends_the_same_messages(
    redis_url: str, publisher: EventBus, redis_client: redis.Redis
) -> None:
    # Given a second bus forced onto kombu's producer, as on a broker other than Redis
    app = Celery("shop2", broker=redis_url)
    via_kombu = EventBus(app, service="shop")
    via_kombu._transport = KombuTransport(app, timeout=5.0)
    publisher.registry.register("orders", [ORDERS_SUBSCRIPTION])

    # When each publishes the same kind of event
    publisher.publish("user.registered", {"user_id": 7})
    ours = redis_client.lpop("events.orders")
    via_kombu.publish("user.registered", {"user_id": 7})
    theirs = redis_client.lpop("events.orders")
    via_kombu.close()

    # Then the messages agree on everything but per-call values
    a, b = decode(ours), decode(theirs)
    assert list(a["headers"]) == list(b["headers"])
    assert list(a["properties"]) == list(b["properties"])
    varying = {"id", "root_id", "origin", "argsrepr", "correlation_id", "reply_to", "delivery_tag"}
    for part in ("headers", "properties"):
        for key, value in a[part].items():
            if key not in varying:
                assert value == b[part][key], key
    assert a["body"][0][0]["data"] == b["body"][0][0]["data"]


# -- workers run them -----------------------------------------------------------------------


@pytest.mark.parametrize("fanout", ["redis", "kombu"])
def test_workers_run_deliveries_and_a_receiver_hears_every_task_sent_event(
    fanout: str,
    start_worker,
    publisher: EventBus,
    redis_client: redis.Redis,
    sent_events_on: None,
) -> None:
    # Given two subscriber services with three handlers for user.registered
    start_worker(ORDERS)
    start_worker(MAILER)
    if fanout == "kombu":
        publisher._transport = KombuTransport(publisher.app, timeout=5.0)
    receiver = TaskSentReceiver(publisher.app, redis_client)

    # When events are published
    results = [publisher.publish("user.registered", {"user_id": i}) for i in range(5)]
    deliveries = {d.task_id: d for r in results for d in r.deliveries}
    assert len(deliveries) == 15

    # Then each handler runs each event once, and one task-sent event names each delivery
    wait_until(lambda: sum(effect_counts(redis_client).values()) >= 15)
    assert set(effect_counts(redis_client).values()) == {1}
    wait_until(lambda: len(receiver.events) >= 15)
    receiver.stop()
    assert sorted(e["uuid"] for e in receiver.events) == sorted(deliveries)
    for event in receiver.events:
        delivery = deliveries[event["uuid"]]
        assert event["name"] == f"user.registered → {delivery.handler}"
        assert event["queue"] == event["routing_key"] == delivery.queue
        assert event["type"] == "task-sent" and event["hostname"].startswith("gen")


# -- signals --------------------------------------------------------------------------------


def _signal_calls(app: Celery, send: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run ``send()`` with recording receivers on both publish signals."""
    before: list[dict[str, Any]] = []
    after: list[dict[str, Any]] = []

    def on_before(signal: Any = None, **kwargs: Any) -> None:
        kwargs["headers"]["trace_id"] = "trace-" + kwargs["headers"]["id"]
        before.append(kwargs)

    def on_after(signal: Any = None, **kwargs: Any) -> None:
        after.append(kwargs)

    signals.before_task_publish.connect(on_before, weak=False)
    signals.after_task_publish.connect(on_after, weak=False)
    try:
        send()
    finally:
        signals.before_task_publish.disconnect(on_before)
        signals.after_task_publish.disconnect(on_after)
    return before, after


def test_publish_signals_fire_as_for_send_task_and_their_headers_reach_the_worker(
    start_worker, publisher: EventBus, redis_client: redis.Redis
) -> None:
    # Given a running subscriber
    start_worker(TRACER)

    # When a publish and a send_task run with receivers that add a header
    results = []
    ours = _signal_calls(publisher.app, lambda: results.append(publisher.publish("trace.x", {})))
    (delivery,) = results[0].deliveries
    theirs = _signal_calls(
        publisher.app,
        lambda: publisher.app.send_task(
            "other.task", args=[results[0].event.to_envelope()], queue="events.other"
        ),
    )

    # Then both signals fired once per delivery with the arguments send_task gives them
    for (our_calls, their_calls) in zip(ours, theirs, strict=True):
        assert len(our_calls) == len(their_calls) == 1
        a, b = our_calls[0], their_calls[0]
        assert sorted(a) == sorted(b)
        assert a["sender"] == delivery.handler
        assert a["exchange"] == b["exchange"] == ""
        assert a["routing_key"] == delivery.queue
        assert a["body"] == b["body"]
        assert list(a["headers"]) == list(b["headers"])
        if "declare" in a:
            assert [q.name for q in a["declare"]] == [delivery.queue]
            assert a["retry_policy"] == b["retry_policy"]
            assert a["properties"].keys() == b["properties"].keys()
    assert ours[1][0]["headers"]["trace_id"] == "trace-" + delivery.task_id

    # And the header the receiver added is in the worker's task request
    request = json.loads(wait_until(lambda: redis_client.lindex(REQUESTS_KEY, 0)))
    assert request["task_id"] == delivery.task_id
    assert request["trace_id"] == "trace-" + delivery.task_id
    redis_client.delete("events.other")
