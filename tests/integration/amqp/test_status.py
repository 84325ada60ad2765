"""`celery eventbus status` on RabbitMQ: counts over AMQP, in flight and ages from the
management API, on a real node with the plugin enabled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import amqp
import pytest
from celery import Celery

from celery_events import EventBus
from celery_events.backends.amqp.status import AmqpQueues
from celery_events.errors import BrokerError
from celery_events.registry import Subscription
from celery_events.status import read_status

from ...harness import ROOT, wait_until
from ...rabbitmq_managed import ManagedNode


@pytest.fixture
def managed_node(managed_rabbitmq: ManagedNode) -> ManagedNode:
    """A node with the management plugin (tests/rabbitmq_managed.py), emptied."""
    return managed_rabbitmq


@pytest.fixture
def channel(managed_node: ManagedNode) -> Iterator[amqp.Channel]:
    connection = amqp.Connection(
        f"127.0.0.1:{managed_node.port}", userid="guest", password="guest"
    )
    connection.connect()
    yield connection.channel()
    connection.close()


QUEUE_ARGUMENTS = {
    "quorum": {"x-queue-type": "quorum", "x-delivery-limit": 5},
    "classic": {"x-queue-type": "classic"},
}


def _fill(channel: amqp.Channel, name: str, kind: str, stamps: list[int]) -> None:
    channel.queue_declare(name, durable=True, auto_delete=False, arguments=QUEUE_ARGUMENTS[kind])
    for stamp in stamps:
        channel.basic_publish(
            amqp.Message(b"{}", timestamp=stamp, delivery_mode=2), exchange="", routing_key=name
        )


@pytest.mark.parametrize("kind", ["quorum", "classic"])
def test_waiting_in_flight_and_oldest_on_real_queues(
    managed_node: ManagedNode, channel: amqp.Channel, kind: str
) -> None:
    name = f"events.status-{kind}-{time.monotonic_ns()}"
    now = int(time.time())
    _fill(channel, name, kind, [now - 30, now - 20, now - 10])
    # A worker took one and has not acked it.
    channel.basic_qos(0, 1, False)
    taken: list[amqp.Message] = []
    tag = channel.basic_consume(name, callback=taken.append)
    wait_until(lambda: taken or channel.connection.drain_events(timeout=0.1) or taken, timeout=10)

    queues = AmqpQueues(managed_node.url, managed_node.management_url, timeout=5)
    try:
        def counted() -> bool:
            # The API's statistics come in pieces: a refresh may count the message in flight
            # before it gives a classic queue's head timestamp (an age shown as `?` until then).
            if queues.in_flight().get(name) != 1:
                return False
            return kind != "classic" or queues.waiting(name, now=now)[1] is not None

        wait_until(counted, timeout=10, what="the management API's statistics")
        count, oldest = queues.waiting(name, now=now)
        assert count == 2
        if kind == "classic":
            # The head's AMQP timestamp: in 3.10 the head may be the message in flight.
            assert oldest is not None and 20 <= oldest <= 30
        else:
            # Quorum queues do not tell it, and peeking would count toward the delivery limit.
            assert oldest is None
        assert queues.waiting(f"{name}.never-declared") == (0, None)

        subscriptions = [Subscription("user.*", "orders", "orders.welcome", name)]
        (status,) = read_status(subscriptions, queues, now=now)
        assert (status.service, status.waiting, status.in_flight) == ("orders", 2, 1)
    finally:
        queues.close()
    # Nothing was disturbed: the waiting deliveries were never handed out.
    channel.basic_cancel(tag)
    channel.basic_ack(taken[0].delivery_tag)
    message = channel.basic_get(name, no_ack=True)
    assert message is not None
    assert message.headers in (None, {}, {"x-delivery-count": 0})
    assert message.properties["timestamp"] == now - 20


def test_an_unreachable_management_api_is_a_broker_error_saying_so(
    managed_node: ManagedNode, channel: amqp.Channel
) -> None:
    name = f"events.status-unreachable-{time.monotonic_ns()}"
    _fill(channel, name, "classic", [int(time.time())])
    queues = AmqpQueues(managed_node.url, "http://guest:secret@127.0.0.1:1", timeout=2)
    with pytest.raises(BrokerError) as caught:
        queues.in_flight()
    message = str(caught.value)
    assert "management API at http://guest:***@127.0.0.1:1" in message
    assert "rabbitmq-plugins enable rabbitmq_management" in message
    assert "management_url" in message and "secret" not in message
    # Counts come over AMQP and still work.
    assert queues._ready(name) == 1
    queues.close()


def test_a_cluster_url_whose_first_node_is_down_is_read_from_the_next_one(
    managed_node: ManagedNode, channel: amqp.Channel
) -> None:
    name = f"events.status-next-{time.monotonic_ns()}"
    _fill(channel, name, "classic", [int(time.time())] * 2)
    down = "amqp://guest:guest@127.0.0.1:1//"
    queues = AmqpQueues(
        f"{down};{managed_node.url}",
        f"http://guest:guest@127.0.0.1:1;{managed_node.management_url}",
        timeout=2,
    )
    try:
        assert queues.waiting(name)[0] == 2
        wait_until(lambda: name in queues._all_queues(fresh=True), timeout=10)
        assert queues.in_flight().get(name) is None
        # The API that answered is asked first from now on.
        assert queues.api == f"http://127.0.0.1:{managed_node.management_port}"
    finally:
        queues.close()


def test_no_management_api_answering_names_each_one_tried(managed_node: ManagedNode) -> None:
    queues = AmqpQueues(
        managed_node.url,
        "http://guest:secret@127.0.0.1:1;"
        f"http://guest:wrong@127.0.0.1:{managed_node.management_port}",
        timeout=2,
    )
    with pytest.raises(BrokerError) as caught:
        queues.in_flight()
    message = str(caught.value)
    assert "management API on any node: http://guest:***@127.0.0.1:1: " in message
    assert f"http://guest:***@127.0.0.1:{managed_node.management_port}: it refused" in message
    assert "secret" not in message and "wrong" not in message
    queues.close()


def test_eventbus_status_reads_a_cluster_url_whose_first_node_is_down(
    managed_node: ManagedNode, redis_url: str
) -> None:
    prefix = f"status-cluster-{time.monotonic_ns()}:"
    subscriber = EventBus(
        Celery("orders", broker=managed_node.url), service="orders", state_url=redis_url,
        key_prefix=prefix,
    )

    @subscriber.subscribe("user.*")
    def welcome(event: object) -> None: ...

    subscriber.register()
    subscriber.close()
    down = "amqp://guest:guest@127.0.0.1:1//"
    done = _status(
        managed_node,
        {
            "CELERY_EVENTS_TEST_BROKER": f"{down};{managed_node.url}",
            "CELERY_EVENTS_TEST_STATE": redis_url,
            "CELERY_EVENTS_TEST_MANAGEMENT": (
                f"http://guest:guest@127.0.0.1:1;{managed_node.management_url}"
            ),
            "CELERY_EVENTS_TEST_PREFIX": prefix,
        },
    )
    assert done.returncode == 0, done.stderr
    (orders,) = json.loads(done.stdout)["services"]
    assert (orders["service"], orders["in_flight"], orders["dead_letters"]) == ("orders", 0, 0)


def test_a_refused_user_is_told_which_tag_it_needs(managed_node: ManagedNode) -> None:
    queues = AmqpQueues(
        managed_node.url, f"http://guest:wrong@127.0.0.1:{managed_node.management_port}"
    )
    with pytest.raises(BrokerError, match="HTTP 401.*monitoring tag"):
        queues.in_flight()


def test_an_unreachable_broker_is_a_broker_error() -> None:
    queues = AmqpQueues("amqp://guest:guest@127.0.0.1:1//", "http://127.0.0.1:1", timeout=1)
    with pytest.raises(BrokerError, match="Could not read queue 'events.orders' on the RabbitMQ"):
        queues.waiting("events.orders")


def _status(node: ManagedNode, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.services.rabbit_status", "eventbus",
         "status", "--json"],
        cwd=ROOT, env={**os.environ, "CELERY_EVENTS_TEST_BROKER": node.url, **env},
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("kind", ["quorum", "classic"])
def test_eventbus_status_on_rabbitmq_with_its_registry_there(
    managed_node: ManagedNode, redis_url: str, kind: str
) -> None:
    # Given the subscriber registered on the RabbitMQ registry and three events waiting
    prefix = f"status-{kind}-{time.monotonic_ns()}:"
    env = {
        "CELERY_EVENTS_TEST_STATE": redis_url,
        "CELERY_EVENTS_TEST_MANAGEMENT": managed_node.management_url,
        "CELERY_EVENTS_TEST_PREFIX": prefix,
        "RABBIT_QUEUE_TYPE": kind,
    }

    def bus(service: str) -> EventBus:
        return EventBus(
            Celery(service, broker=managed_node.url), service=service, state_url=redis_url,
            key_prefix=prefix, queue_type=kind, queue_template=f"{prefix}{{service}}",
        )

    subscriber, publisher = bus("orders"), bus("users")

    @subscriber.subscribe("user.*")
    def welcome(event: object) -> None: ...

    subscriber.register()
    try:
        for n in range(3):
            assert publisher.publish("user.registered", {"n": n}).deliveries
    finally:
        subscriber.close()
        publisher.close()

    # When `celery eventbus status` runs
    def waiting() -> Any:
        done = _status(managed_node, env)
        assert done.returncode == 0, done.stderr
        found = json.loads(done.stdout)
        return found if found["services"] and found["services"][0]["waiting"] == 3 else None

    found = wait_until(waiting, timeout=20, interval=0.5)
    # Then it shows the backend, and the service's waiting deliveries and none in flight
    assert found["backend"]["name"] == "amqp"
    assert "registry on RabbitMQ" in found["backend"]["description"]
    (orders,) = found["services"]
    assert (orders["service"], orders["waiting"], orders["in_flight"]) == ("orders", 3, 0)
    assert orders["dead_letters"] == 0


def test_eventbus_status_says_when_the_management_api_is_unreachable(
    managed_node: ManagedNode, redis_url: str
) -> None:
    prefix = f"status-down-{time.monotonic_ns()}:"
    subscriber = EventBus(
        Celery("orders", broker=managed_node.url), service="orders", state_url=redis_url,
        key_prefix=prefix,
    )

    @subscriber.subscribe("user.*")
    def welcome(event: object) -> None: ...

    subscriber.register()
    subscriber.close()
    done = _status(
        managed_node,
        {
            "CELERY_EVENTS_TEST_STATE": redis_url,
            "CELERY_EVENTS_TEST_MANAGEMENT": "http://guest:guest@127.0.0.1:1",
            "CELERY_EVENTS_TEST_PREFIX": prefix,
        },
    )
    # The exit code of an unreachable broker, one clear message, no traceback
    assert done.returncode == 3, done.stderr
    assert "Could not read the RabbitMQ management API at http://guest:***@127.0.0.1:1" in (
        done.stderr
    )
    assert "rabbitmq-plugins enable rabbitmq_management" in done.stderr
    assert "Traceback" not in done.stderr
