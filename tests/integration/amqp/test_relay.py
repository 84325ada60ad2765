"""RabbitMQ: a publish wider than ``relay_fanout_above`` goes to one intake queue, and every
worker's relay republishes it to the events exchange (celery_events/backends/amqp/relay.py):
delivered to every subscription, atomic, nothing lost when a relay or a publisher is killed,
a redelivered copy skipped by the inbox."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import amqp
import pytest
import redis
from celery import Celery

from celery_events import EventBus
from celery_events.backends.amqp.relay import ROUTE_HEADER, intake_name
from celery_events.backends.amqp.topology import Topology

from ...conftest import WORKER_ARGS
from ...harness import ROOT, Worker, stop_workers, wait_until
from .conftest import Rabbit

INTAKE = intake_name(Topology("celery_events:"))


def _effects(client: redis.Redis) -> list[dict[str, str]]:
    return [json.loads(raw) for raw in client.lrange("test:effects", 0, -1)]


def _subscriber(rabbit: Rabbit, handlers: int, service: str = "fan") -> EventBus:
    """A bus of ``service`` with the handlers of tests/services/relayed.py, registered from
    this process (no worker: nothing consumes its queues until one starts)."""
    bus = EventBus(Celery(service, broker=rabbit.url), service=service,
                   registry_url=rabbit.state_url)
    for i in range(handlers):
        bus.subscribe("fan.#", name=f"h{i}")(lambda event: None)
    bus.register()
    return bus


def _host(rabbit: Rabbit) -> str:
    return rabbit.url.split("@", 1)[1].split("/", 1)[0]


def _messages(rabbit: Rabbit) -> dict[str, int]:
    """The ready messages of every handler, intake and dead-letter queue, asked of each queue
    (rabbitmqctl's counts of quorum queues lag)."""
    names = [n for n in rabbit.queues() if n.startswith(("events.", "celery_events."))]
    counts = {}
    with amqp.Connection(host=_host(rabbit)) as connection:
        channel = connection.channel()
        for name in names:
            counts[name] = channel.queue_declare(name, passive=True).message_count
    return counts


@pytest.fixture
def start_fan_worker(
    rabbit: Rabbit, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Worker]]:
    """`celery -A tests.services.relayed worker` with ``handlers`` handlers (0: it relays
    only) as service ``service``; stopped after the test."""
    started: list[Worker] = []

    def start(service: str = "fan", handlers: int = 3, ready: bool = True) -> Worker:
        env = {**os.environ, **rabbit.env(RELAY_SERVICE=service, RELAY_HANDLERS=str(handlers))}
        name = f"{service}{len(started)}@%h"
        worker = Worker("tests.services.relayed", env, [*WORKER_ARGS, "-n", name], tmp_path)
        started.append(worker)
        return worker.wait_ready() if ready else worker

    yield start
    stop_workers(started, request)


def _publisher(rabbit: Rabbit, above: int | None) -> EventBus:
    return EventBus(Celery("shop", broker=rabbit.url), service="shop",
                    registry_url=rabbit.state_url, relay_fanout_above=above)


def test_a_wide_publish_with_no_relay_running_waits_in_the_intake_queue(rabbit: Rabbit) -> None:
    # Given 24 subscriptions and no worker running (no relay)
    subscriber = _subscriber(rabbit, 24)
    publisher = _publisher(rabbit, above=8)
    try:
        # When an event is published to them
        result = publisher.publish("fan.wide", {"n": 1})
        # Then the publisher reported every delivery, and its one message is in the (quorum)
        # intake queue, none in the handler queues
        assert len(result.deliveries) == 24
        assert len({d.task_id for d in result.deliveries}) == 24
        queues = _messages(rabbit)
        assert queues[INTAKE] == 1
        assert rabbit.queues()[INTAKE]["type"] == "quorum"
        assert all(queues[d.queue] == 0 for d in result.deliveries)
    finally:
        publisher.close()
        subscriber.close()


def test_a_wide_publish_reaches_every_subscription_through_the_relay(
    rabbit: Rabbit, start_fan_worker: Callable[..., Worker], redis_client: redis.Redis
) -> None:
    # Given a worker with 24 handlers (and its relay)
    start_fan_worker(handlers=24)
    publisher = _publisher(rabbit, above=8)
    try:
        # When an event is published to them
        result = publisher.publish("fan.wide", {"n": 1})
        # Then every handler took effect once, under the task id the publisher reported
        wait_until(lambda: len(_effects(redis_client)) == 24, timeout=30, what="24 effects")
        effects = _effects(redis_client)
        assert Counter(e["handler"] for e in effects) == {f"fan.h{i}": 1 for i in range(24)}
        assert {e["event_id"] for e in effects} == {result.event.id}
        assert {d.handler for d in result.deliveries} == {f"fan.h{i}" for i in range(24)}
        assert _messages(rabbit)[INTAKE] == 0
    finally:
        publisher.close()


def test_a_narrow_publish_goes_straight_to_the_subscribers_queues(rabbit: Rabbit) -> None:
    # Given 3 subscriptions and a threshold of 8, no worker running
    subscriber = _subscriber(rabbit, 3)
    publisher = _publisher(rabbit, above=8)
    try:
        # When an event is published
        result = publisher.publish("fan.narrow", {})
        # Then each subscriber's queue holds it and no intake queue was needed
        queues = _messages(rabbit)
        assert {d.queue: queues[d.queue] for d in result.deliveries} == {
            f"events.fan.h{i}": 1 for i in range(3)
        }
        assert INTAKE not in queues
    finally:
        publisher.close()
        subscriber.close()


def _take_intake(rabbit: Rabbit) -> amqp.Message:
    with amqp.Connection(host=_host(rabbit)) as connection:
        channel = connection.channel()
        message = channel.basic_get(INTAKE, no_ack=True)
        assert message is not None
        return message


def test_a_copy_republished_twice_runs_each_handler_once(
    rabbit: Rabbit, start_fan_worker: Callable[..., Worker], redis_client: redis.Redis
) -> None:
    # Given a relayed event taken from the intake queue before any relay ran
    subscriber = _subscriber(rabbit, 3)
    publisher = _publisher(rabbit, above=1)
    try:
        result = publisher.publish("fan.twice", {})
        message = _take_intake(rabbit)
    finally:
        publisher.close()
        subscriber.close()
    worker = start_fan_worker(handlers=3)
    # When it is republished twice, as a relay killed between its republish and its ack and
    # the relay that gets the copy again do
    headers = dict(message.properties["application_headers"])
    route = headers.pop(ROUTE_HEADER)
    with amqp.Connection(host=_host(rabbit)) as connection:
        channel = connection.channel()
        for _ in range(2):
            copy = amqp.Message(message.body, **{**message.properties,
                                                 "application_headers": headers})
            channel.basic_publish_confirm(copy, exchange="celery_events",
                                          routing_key=route, mandatory=True)
    # Then both copies of each handler's delivery have the reported task id, the inbox
    # skips the second and each handler took effect once
    def skipped() -> bool:
        log = worker.log()
        return all(f"delivery {d.task_id} skipped" in log for d in result.deliveries)

    wait_until(skipped, timeout=30, what="each second copy skipped")
    effects = _effects(redis_client)
    assert Counter(e["handler"] for e in effects) == {"fan.h0": 1, "fan.h1": 1, "fan.h2": 1}
    assert {e["event_id"] for e in effects} == {result.event.id}


def test_a_returned_republish_declares_the_queues_from_the_records_and_is_delivered(
    rabbit: Rabbit, start_fan_worker: Callable[..., Worker]
) -> None:
    # Given a relayed event waiting in the intake queue, whose subscribers' queues were then
    # deleted (so the events exchange routes it nowhere)
    subscriber = _subscriber(rabbit, 2)
    publisher = _publisher(rabbit, above=1)
    try:
        result = publisher.publish("fan.returned", {})
    finally:
        publisher.close()
        subscriber.close()
    for delivery in result.deliveries:
        rabbit.ctl("delete_queue", delivery.queue)
    assert not any(d.queue in rabbit.queues() for d in result.deliveries)
    assert _messages(rabbit)[INTAKE] == 1
    # And an intake message of an event nobody subscribes to
    with amqp.Connection(host=_host(rabbit)) as connection:
        channel = connection.channel()
        channel.basic_publish_confirm(
            amqp.Message(b"[[{}], {}, null]", delivery_mode=2, message_id="nobody-1",
                         application_headers={ROUTE_HEADER: "nobody.listens"}),
            exchange="", routing_key=INTAKE, mandatory=True,
        )
    # When a worker that only relays starts
    worker = start_fan_worker(service="relayer", handlers=0)
    # Then the relay declared the subscribers' queues from their records and the event is in
    # each of them, and the other was logged as having no subscriber and acked
    wait_until(
        lambda: all(_messages(rabbit).get(d.queue) == 1 for d in result.deliveries),
        timeout=20, what="the event in both recreated queues",
    )
    queues = rabbit.queues()
    assert {queues[d.queue]["type"] for d in result.deliveries} == {"quorum"}
    wait_until(lambda: "no subscription matches it" in worker.log(), timeout=20,
               what="the unsubscribed event logged")
    assert "'nobody.listens' (message nobody-1)" in worker.log()
    wait_until(lambda: _messages(rabbit)[INTAKE] == 0, timeout=20, what="intake acked")


def test_a_relay_killed_mid_stream_loses_and_duplicates_nothing(
    rabbit: Rabbit, start_fan_worker: Callable[..., Worker], redis_client: redis.Redis
) -> None:
    # Given a service with 3 handlers (its worker relays too) and a worker that only relays
    start_fan_worker(handlers=3)
    relay = start_fan_worker(service="relayer", handlers=0)
    publisher = _publisher(rabbit, above=1)
    try:
        # When 300 events are published through the relays and the relay-only worker is
        # kill -9ed after 100 of them, and another one starts
        ids = []
        for i in range(300):
            ids.append(publisher.publish("fan.stream", {"i": i}).event.id)
            if i == 100:
                relay.kill()
                start_fan_worker(service="relayer", handlers=0, ready=False)
        # Then every handler took effect once per event: 0 lost, 0 duplicated
        wait_until(lambda: len(_effects(redis_client)) >= 900, timeout=90,
                   what="900 effects")
        wait_until(lambda: not any(_messages(rabbit).values()), timeout=30,
                   what="every queue drained")
        effects = Counter((e["handler"], e["event_id"]) for e in _effects(redis_client))
        assert effects == {(f"fan.h{h}", i): 1 for h in range(3) for i in ids}
    finally:
        publisher.close()


_PUBLISHER = textwrap.dedent(
    """
    import os, sys
    from celery import Celery
    from celery_events import EventBus
    bus = EventBus(Celery("shop", broker=os.environ["BROKER"]), service="shop",
                   registry_url=os.environ["STATE"], relay_fanout_above=1)
    run = sys.argv[1]
    i = 0
    while True:
        bus.publish("fan.kill", {"run": run, "i": i})
        if i == 0:
            print("publishing", flush=True)
        i += 1
    """
)


def test_a_publisher_killed_mid_publish_leaves_every_subscriber_the_event_or_none(
    rabbit: Rabbit, start_fan_worker: Callable[..., Worker], redis_client: redis.Redis
) -> None:
    # Given 10 subscriptions, relayed (threshold 1), with a worker consuming them
    start_fan_worker(handlers=10)
    env = {**os.environ, "BROKER": rabbit.url, "STATE": rabbit.state_url}
    # When a publisher is SIGKILLed at a random moment, 6 times
    for run in range(6):
        process = subprocess.Popen(
            [sys.executable, "-c", _PUBLISHER, str(run)], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, text=True,
        )
        assert process.stdout is not None
        assert process.stdout.readline() == "publishing\n"
        # (still publishing when killed)
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=random.uniform(0.02, 0.15))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        process.stdout.close()
    # Then, once every queue is drained and every run finished, each event reached all 10
    # handlers or none (a partial event never completes: the wait times out), each once
    def complete() -> bool:
        per_event = Counter(e["event_id"] for e in _effects(redis_client))
        return not any(_messages(rabbit).values()) and set(per_event.values()) == {10}

    wait_until(complete, timeout=120, what="every event at all 10 handlers, queues drained")
    effects = _effects(redis_client)
    # (each run's first event was confirmed before it printed "publishing")
    assert len({e["event_id"] for e in effects}) >= 6
    assert set(Counter((e["handler"], e["event_id"]) for e in effects).values()) == {1}
