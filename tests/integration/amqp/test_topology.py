"""RabbitMQ: the queues a worker declares, and the workers it refuses to start."""

from __future__ import annotations

from collections.abc import Callable

from kombu import Connection

from ...harness import Worker, wait_until
from .conftest import Rabbit


def test_handler_queues_are_quorum_with_a_delivery_limit_and_a_dead_letter_exchange(
    rabbit: Rabbit, start_rabbit_worker: Callable[..., Worker]
) -> None:
    start_rabbit_worker(RABBIT_SERVICE="alpha")
    queues = rabbit.queues()
    seen = queues["events.alpha.seen"]
    assert seen["type"] == "quorum"
    arguments = dict(seen["arguments"])
    assert arguments["x-queue-type"] == "quorum"
    assert arguments["x-delivery-limit"] == 4  # max_deliveries=2, plus the margin
    assert arguments["x-dead-letter-exchange"] == "celery_events.dead"
    assert queues["celery_events.dead.alpha"]["type"] == "quorum"


def test_classic_queues_on_request(rabbit: Rabbit, start_rabbit_worker: Callable[..., Worker]) -> None:
    start_rabbit_worker(RABBIT_SERVICE="alpha", RABBIT_QUEUE_TYPE="classic")
    seen = rabbit.queues()["events.alpha.seen"]
    assert seen["type"] == "classic"
    assert "x-delivery-limit" not in dict(seen["arguments"])


def test_classic_queues_with_retry_waits_past_consumer_timeout_refuse_to_start(
    rabbit: Rabbit, start_rabbit_worker: Callable[..., Worker]
) -> None:
    # retry_backoff_max 3600 s + 300 s time limit > RabbitMQ's 30 min consumer_timeout
    worker = start_rabbit_worker(
        RABBIT_SERVICE="alpha", RABBIT_QUEUE_TYPE="classic", RABBIT_BACKOFF_MAX="3600",
        ready=False,
    )
    wait_until(lambda: worker.process.poll() is not None, timeout=30, what="the worker to exit")
    assert worker.process.returncode == 1
    log = worker.log()
    assert "longer than the broker's consumer_timeout (1800 s" in log
    assert "queue_type='quorum'" in log
    assert " ready." not in log


def test_quorum_queues_take_long_retry_waits(
    rabbit: Rabbit, start_rabbit_worker: Callable[..., Worker]
) -> None:
    start_rabbit_worker(RABBIT_SERVICE="alpha", RABBIT_BACKOFF_MAX="3600")


def test_a_queue_declared_with_other_arguments_refuses_the_worker_with_the_fix(
    rabbit: Rabbit, start_rabbit_worker: Callable[..., Worker]
) -> None:
    # Given the handler's queue declared beforehand as a classic queue
    with Connection(rabbit.url) as connection:
        connection.channel().queue_declare("events.alpha.seen", durable=True, auto_delete=False)
    worker = start_rabbit_worker(RABBIT_SERVICE="alpha", ready=False)
    wait_until(lambda: worker.process.poll() is not None, timeout=30, what="the worker to exit")
    log = worker.log()
    assert worker.process.returncode == 1
    assert "The queue 'events.alpha.seen' exists on RabbitMQ with other arguments" in log
    assert "rabbitmqctl delete_queue events.alpha.seen" in log
    assert "Unrecoverable error" not in log


def test_a_queue_declared_beforehand_as_the_worker_declares_it_is_used(
    rabbit: Rabbit, start_rabbit_worker: Callable[..., Worker]
) -> None:
    # Given an operator who declared the handler's quorum queue before any worker ran
    from celery_events.backends.amqp.topology import Topology

    arguments = Topology("celery_events:", "quorum", 2).queue_arguments("alpha")
    with Connection(rabbit.url) as connection:
        connection.channel().queue_declare(
            "events.alpha.seen", durable=True, auto_delete=False, arguments=arguments
        )
    # Then the worker starts and consumes it
    worker = start_rabbit_worker(RABBIT_SERVICE="alpha")
    assert "consuming events.alpha.orders, events.alpha.seen" in worker.log()
