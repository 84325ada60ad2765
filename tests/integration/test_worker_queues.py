"""`celery worker -Q` and `-X` choose among a service's event queues: a worker can be kept for
one handler's queue, or kept off it, while a plain worker (or one whose -Q names none of them)
consumes them all. The same on RabbitMQ: tests/integration/amqp/test_worker_queues.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
import redis
from celery import Celery

from celery_events import EventBus

from ..harness import Worker, wait_until

LANES = "tests.services.lanes"


@pytest.fixture
def shop(redis_url: str) -> Iterator[EventBus]:
    bus = EventBus(Celery("shop", broker=redis_url), service="shop")
    yield bus
    bus.close()


def handled(client: redis.Redis) -> list[str]:
    return [json.loads(raw)["handler"] for raw in client.lrange("test:effects", 0, -1)]


def published(shop: EventBus, start_worker: Callable[..., Worker], *args: str) -> None:
    start_worker(LANES, args=list(args))
    shop.publish("lane.ping", {"n": 1})


def test_a_worker_whose_q_names_one_event_queue_consumes_that_one_only(
    shop: EventBus, start_worker: Callable[..., Worker], redis_client: redis.Redis
) -> None:
    published(shop, start_worker, "-Q", "events.lanes.slow")
    wait_until(lambda: handled(redis_client) == ["slow"], timeout=20)
    # The other handler's delivery waits in its queue for a worker that consumes it.
    assert redis_client.llen("events.lanes") == 1
    start_worker(LANES)
    wait_until(lambda: sorted(handled(redis_client)) == ["fast", "slow"], timeout=20)
    assert redis_client.llen("events.lanes") == 0


def test_a_worker_keeps_off_the_event_queues_x_names(
    shop: EventBus, start_worker: Callable[..., Worker], redis_client: redis.Redis
) -> None:
    published(shop, start_worker, "-X", "events.lanes.slow")
    wait_until(lambda: handled(redis_client) == ["fast"], timeout=20)
    assert redis_client.llen("events.lanes.slow") == 1


def test_a_q_that_names_no_event_queue_leaves_every_one_consumed(
    shop: EventBus, start_worker: Callable[..., Worker], redis_client: redis.Redis
) -> None:
    published(shop, start_worker, "-Q", "lanes.tasks")
    wait_until(lambda: sorted(handled(redis_client)) == ["fast", "slow"], timeout=20)
