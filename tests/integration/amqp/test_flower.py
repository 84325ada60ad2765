"""RabbitMQ: Flower shows one row per delivery of a published event, under its own task id."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_events import EventBus

from ...flower_harness import Flower
from ...harness import Worker, wait_until
from .conftest import Rabbit


@pytest.fixture
def flower(rabbit: Rabbit, tmp_path: Path) -> Iterator[Flower]:
    env = dict(os.environ, **rabbit.env(RABBIT_SERVICE="alpha"))
    server = Flower("tests.services.rabbit", env, tmp_path, ["--enable_events=False"])
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def test_each_delivery_is_its_own_row_in_flower(
    rabbit: Rabbit, flower: Flower, start_rabbit_worker: Callable[..., Worker]
) -> None:
    # Given two subscribing services with two matching handlers each
    start_rabbit_worker(RABBIT_SERVICE="alpha")
    start_rabbit_worker(RABBIT_SERVICE="beta")
    publisher = EventBus(Celery("shop", broker=rabbit.url), service="shop",
                         registry_url=rabbit.state_url)
    # When one event is published (one message on RabbitMQ)
    result = publisher.publish("shop.order.created", {"n": 1})
    publisher.close()
    # Then Flower lists four deliveries, each under its own task id, name and worker, sent
    # (the publisher's task-sent events), received and succeeded
    def done() -> dict[str, Any] | None:
        tasks = flower.tasks()
        rows = [tasks.get(d.task_id) for d in result.deliveries]
        if all(row and row["state"] == "SUCCESS" for row in rows):
            return {d.task_id: flower.task(d.task_id) for d in result.deliveries}
        return None

    rows = wait_until(done, timeout=30, interval=0.2, what="four deliveries in Flower")
    assert len(rows) == 4
    for delivery in result.deliveries:
        row = rows[delivery.task_id]
        assert row["name"] == f"shop.order.created → {delivery.handler}"
        assert row["worker"].startswith(delivery.service)
        assert result.event.id in row["args"]
    sent = wait_until(
        lambda: all(flower.task(d.task_id)["sent"] for d in result.deliveries),
        what="the task-sent events",
    )
    assert sent
