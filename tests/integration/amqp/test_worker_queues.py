"""RabbitMQ: `celery worker -Q` and `-X` choose among the handlers' own queues, as on Redis
(tests/integration/test_worker_queues.py); Celery's own consumer never takes an event queue
-Q names."""

from __future__ import annotations

from collections.abc import Callable

import redis
from kombu import Connection

from celery_events import EventBus

from ...harness import Worker, wait_until
from .conftest import Rabbit, records

# The test service's two handlers, both matching shop.order.*, each on its own queue.
SEEN, ORDERS = "events.rabbit.seen", "events.rabbit.orders"


def waiting(rabbit: Rabbit, queue: str) -> int:
    with Connection(rabbit.url) as connection:
        return int(connection.default_channel.queue_declare(queue, passive=True).message_count)


def handled(client: redis.Redis) -> list[str]:
    return sorted(str(r["handler"]) for r in records(client, "test:effects"))


def test_a_worker_whose_q_names_one_handler_queue_consumes_that_one_only(
    publisher: EventBus,
    start_rabbit_worker: Callable[..., Worker],
    rabbit: Rabbit,
    redis_client: redis.Redis,
) -> None:
    start_rabbit_worker(args=["-Q", ORDERS])
    publisher.publish("shop.order.placed", {"n": 1})
    wait_until(lambda: handled(redis_client) == ["rabbit.orders"], timeout=30)
    # The other handler's delivery waits in its queue for a worker that consumes it.
    wait_until(lambda: waiting(rabbit, SEEN) == 1, timeout=10)
    start_rabbit_worker()
    wait_until(lambda: handled(redis_client) == ["rabbit.orders", "rabbit.seen"], timeout=30)


def test_a_worker_keeps_off_the_handler_queues_x_names(
    publisher: EventBus,
    start_rabbit_worker: Callable[..., Worker],
    rabbit: Rabbit,
    redis_client: redis.Redis,
) -> None:
    start_rabbit_worker(args=["-X", SEEN])
    publisher.publish("shop.order.placed", {"n": 1})
    wait_until(lambda: handled(redis_client) == ["rabbit.orders"], timeout=30)
    wait_until(lambda: waiting(rabbit, SEEN) == 1, timeout=10)
