"""The RabbitMQ backend's names, queue arguments and retry routes, its settings, and the
subscription record's queue arguments (pure functions: no broker)."""

from __future__ import annotations

import json

import pytest
from celery import Celery

from celery_events import ConfigurationError, EventBus
from celery_events._worker import check_worker
from celery_events.backends.amqp.topology import (
    FANOUT_TASK,
    Topology,
    delivery_id,
    handler_queue,
    retry_token,
)
from celery_events.registry import Subscription, _decode_record
from celery_events.settings import Settings


def test_each_handler_has_a_queue_named_from_its_queue_and_its_name() -> None:
    assert handler_queue("events.orders", "orders.welcome") == "events.orders.welcome"
    assert handler_queue("billing-q", "orders.charge") == "billing-q.charge"


def test_a_retry_token_is_one_topic_word_per_queue() -> None:
    tokens = {retry_token(f"events.orders.h{n}") for n in range(1000)}
    assert len(tokens) == 1000
    assert all("." not in token and "*" not in token and "#" not in token for token in tokens)


def test_publisher_and_worker_derive_the_same_distinct_delivery_ids() -> None:
    first = delivery_id("m1", "orders.welcome")
    assert first == delivery_id("m1", "orders.welcome")
    assert len({first, delivery_id("m1", "orders.other"), delivery_id("m2", "orders.welcome")}) == 3
    assert FANOUT_TASK == "celery_events.fanout"


def test_quorum_queues_have_a_delivery_limit_above_max_deliveries_and_a_dead_letter_exchange() -> None:
    arguments = Topology("celery_events:", "quorum", max_deliveries=5).queue_arguments("orders")
    assert arguments["x-queue-type"] == "quorum"
    assert arguments["x-delivery-limit"] == 7
    assert arguments["x-dead-letter-exchange"] == "celery_events.dead"
    assert arguments["x-dead-letter-routing-key"] == "orders"


def test_classic_queues_have_no_delivery_limit() -> None:
    arguments = Topology("celery_events:", "classic").queue_arguments("orders")
    assert arguments["x-queue-type"] == "classic"
    assert "x-delivery-limit" not in arguments


def test_exchange_names_come_from_the_key_prefix() -> None:
    topology = Topology("acme:")
    assert topology.exchange_name == "acme"
    assert topology.retry_exchange_name == "acme.retry"
    assert topology.dead_queue_name("orders") == "acme.dead.orders"


def test_a_retry_goes_to_the_retry_exchange_with_its_queues_token() -> None:
    countdown, route = Topology("celery_events:", "classic").retry_options(
        "events.orders", "orders.welcome", 12.5
    )
    assert countdown == 12.5
    assert route["exchange"] == "celery_events.retry"
    assert route["routing_key"] == retry_token("events.orders.welcome")
    assert route["queue"].name == "events.orders.welcome"
    assert route["declare"] == []


def test_a_long_retry_on_quorum_waits_in_the_delayed_delivery_queues() -> None:
    countdown, route = Topology("celery_events:", "quorum").retry_options(
        "events.orders", "orders.welcome", 3600.0
    )
    assert countdown == 0
    assert route["exchange"] == "celery_delayed_27"
    bits, _, token = route["routing_key"].rpartition(".")
    assert token == retry_token("events.orders.welcome")
    assert int(bits.replace(".", ""), 2) == 3600
    # Under a second: the worker's own timer
    countdown, route = Topology("celery_events:", "quorum").retry_options("q", "s.h", 0.5)
    assert countdown == 0.5 and route["exchange"] == "celery_events.retry"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queue_type": "stream"}, "queue_type 'stream' must be 'quorum'"),
        ({"state_url": "amqp://x"}, "state_url 'amqp://x' must be a redis://"),
        ({"broker_consumer_timeout": 0}, "broker_consumer_timeout must be a finite"),
    ],
)
def test_the_rabbitmq_settings_are_validated(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_options(options)


def test_a_sentinel_state_url_is_accepted() -> None:
    assert Settings.from_options({"state_url": "sentinel://127.0.0.1:26379"}).state_url


def test_rabbitmq_without_a_state_store_publishes_but_refuses_inboxes_naming_the_options() -> None:
    # A publisher needs no state; a service with handlers does, and its worker stops at start.
    bus = EventBus(Celery("nostate", broker="amqp://guest@127.0.0.1:1//"), service="nostate")
    assert "no state store" in bus.backend.description
    with pytest.raises(ConfigurationError, match="state_url='redis://host:6379/0'") as info:
        _ = bus.inbox
    assert "DatabaseState" in str(info.value)
    with pytest.raises(ConfigurationError, match="needs a state store"):
        _ = bus.dead_letters

    @bus.subscribe("user.*")
    def welcome(event: object) -> None: ...

    with pytest.raises(ConfigurationError, match="needs a state store"):
        check_worker(bus)


def test_the_subscriptions_on_rabbitmq_carry_their_queue_and_arguments() -> None:
    bus = EventBus(
        Celery("orders", broker="amqp://guest@127.0.0.1:1//"),
        service="orders",
        registry_url="redis://127.0.0.1:1/0",
        queue_type="classic",
    )

    @bus.subscribe("user.*")
    def welcome(event: object) -> None: ...

    (subscription,) = bus.subscriptions()
    assert subscription.queue == "events.orders.welcome"
    assert subscription.arguments["x-queue-type"] == "classic"
    assert bus.backend.capabilities.native_delivery_limit is False


def test_queue_arguments_round_trip_through_the_record_and_are_optional() -> None:
    subscription = Subscription(
        "user.*", "orders", "orders.welcome", "events.orders.welcome",
        queue_arguments=(("x-delivery-limit", 7), ("x-queue-type", "quorum")),
    )
    record = json.dumps({"registered_at": 1.0, "subscriptions": [subscription.to_json()]})
    (read,) = _decode_record("orders", record.encode())
    assert read.arguments == {"x-delivery-limit": 7, "x-queue-type": "quorum"}
    # A record written before arguments were recorded reads as before
    old = json.dumps({"registered_at": 1.0, "subscriptions": [
        {"pattern": "user.*", "handler": "orders.welcome", "queue": "events.orders"}
    ]})
    (read,) = _decode_record("orders", old.encode())
    assert read.queue_arguments == ()
    assert "arguments" not in Subscription("a", "s", "s.h", "q").to_json()


def test_delivery_ids_of_a_uuid_message_keep_its_shape_and_differ_per_handler() -> None:
    import uuid

    message = str(uuid.uuid4())
    ids = {delivery_id(message, f"svc.handler{i}") for i in range(1000)}
    assert len(ids) == 1000 and message not in ids
    assert all(uuid.UUID(i).version == 4 for i in ids)
    assert all(i[:24] == message[:24] for i in ids)
