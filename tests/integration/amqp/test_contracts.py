"""Versions on RabbitMQ: the broker copies a publish to every queue bound to its name, and
each handler still gets only the versions it accepts, as on Redis (no dead letter for the
copies it does not take)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from celery_events import EventBus

from ...conftest import WORKER_ARGS
from ...harness import Worker, stop_workers, wait_until
from .conftest import Rabbit, records

ORDER_V1 = {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}
ORDER_V2 = {"type": "object", "required": ["order_id"], "properties": {"order_id": {"type": "integer"}}}


@pytest.fixture
def fulfilment(
    rabbit: Rabbit, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[], Worker]]:
    """`celery -A tests.services.rabbit_contracted worker` on the test node."""
    started: list[Worker] = []

    def start() -> Worker:
        worker = Worker(
            "tests.services.rabbit_contracted", {**os.environ, **rabbit.env()},
            [*WORKER_ARGS, "-n", f"fulfilment{len(started)}@%h"], tmp_path,
        )
        started.append(worker)
        return worker.wait_ready()

    yield start
    stop_workers(started, request)


@pytest.fixture
def shop(rabbit: Rabbit) -> Iterator[EventBus]:
    bus = EventBus(Celery("shop", broker=rabbit.url), service="shop", registry_url=rabbit.state_url)
    bus.declare("order.created", schema=ORDER_V1, version=1)
    bus.declare("order.created", schema=ORDER_V2, version=2)
    bus.register()
    yield bus
    bus.close()


def test_each_handler_gets_the_versions_it_accepts_on_rabbitmq(
    fulfilment: Callable[[], Worker], shop: EventBus, rabbit: Rabbit, redis_client: redis.Redis
) -> None:
    # Given fulfilment's worker: ship accepts v1 only, audit every version
    worker = fulfilment()
    # When the shop publishes v1, then v2, of order.created
    v1 = shop.publish("order.created", {"id": 1}, version=1)
    v2 = shop.publish("order.created", {"order_id": 2})

    # Then the publisher reports v2's delivery to audit alone
    assert sorted(d.handler for d in v1.deliveries) == ["fulfilment.audit", "fulfilment.ship"]
    assert [d.handler for d in v2.deliveries] == ["fulfilment.audit"]
    # And the handlers ran as declared, each delivery under the task id the publisher reported
    effects = wait_until(
        lambda: (found := records(redis_client, "test:effects")) and len(found) >= 3 and found,
        timeout=30, what="three handler effects",
    )
    ran = sorted((e["handler"], e["event_id"], e["task_id"]) for e in effects)
    reported = sorted(
        (d.handler, result.event.id, d.task_id) for result in (v1, v2) for d in result.deliveries
    )
    assert ran == reported
    # And ship's copy of v2, which RabbitMQ routed to its queue by name, was acked unrun:
    # no dead letter, nothing left on the queue
    wait_until(
        lambda: f"event {v2.event.id} acked unrun" in worker.log(), what="ship's copy acked"
    )
    assert rabbit.ready("events.fulfilment.ship") == 0
    view = EventBus(
        Celery("view", broker=rabbit.url), service="fulfilment", registry_url=rabbit.state_url
    )
    try:
        assert view.dead_letters.count() == 0
    finally:
        view.close()
