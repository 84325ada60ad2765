"""RabbitMQ: a worker whose broker connection is lost consumes its event queues again."""

from __future__ import annotations

import json
from collections.abc import Callable

import redis
from celery import Celery

from celery_events import EventBus

from ...harness import Worker, wait_until
from .conftest import Rabbit


def _handled(client: redis.Redis) -> set[str]:
    return {str(json.loads(raw)["task_id"]) for raw in client.lrange("test:effects", 0, -1)}


def test_a_worker_consumes_its_event_queues_again_after_its_connection_is_lost(
    rabbit: Rabbit, start_rabbit_worker: Callable[..., Worker], redis_client: redis.Redis
) -> None:
    # Given a worker that handled an event
    start_rabbit_worker(RABBIT_SERVICE="alpha")
    publisher = EventBus(
        Celery("shop", broker=rabbit.url), service="shop", registry_url=rabbit.state_url
    )
    try:
        first = publisher.publish("shop.order.created", {"n": 1})
        ids = {d.task_id for d in first.deliveries}
        wait_until(lambda: ids <= _handled(redis_client), timeout=20, what="the first event")
        # When the broker closes every connection (as a node restart or failover does)
        rabbit.ctl("close_all_connections", "a test closes every connection")
        # Then the worker takes the events published afterwards from its queues
        later = [publisher.publish("shop.order.created", {"n": n}) for n in range(2, 5)]
        ids = {d.task_id for result in later for d in result.deliveries}
        wait_until(lambda: ids <= _handled(redis_client), timeout=60,
                   what="the events published after the connection was lost")
    finally:
        publisher.close()
