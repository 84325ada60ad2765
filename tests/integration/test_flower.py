"""Flower shows every delivery: a real Flower, real workers, a real Redis, headless Chromium.

Flower runs with ``--enable_events=False`` so that it never turns task events on by itself:
whatever it shows, the workers sent because the bus turned task events on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_events import EventBus

from ..flower_harness import Flower, chromium, chromium_or_skip
from ..harness import ROOT, wait_until

BILLING = "tests.services.billing"


@pytest.fixture
def flower(redis_url: str, tmp_path: Path) -> Iterator[Flower]:
    env = dict(os.environ, CELERY_EVENTS_TEST_BROKER=redis_url)
    server = Flower(BILLING, env, tmp_path, ["--enable_events=False"])
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def flower_task(flower: Flower, task_id: str, state: str) -> dict[str, Any]:
    """Wait until Flower reports ``task_id`` in ``state``, and return its task info."""

    def reported() -> dict[str, Any] | None:
        task = flower.tasks().get(task_id)
        return flower.task(task_id) if task and task["state"] == state else None

    return wait_until(reported, timeout=30, interval=0.2, what=f"{task_id} {state} in Flower")


def test_a_plain_worker_sends_the_task_events_flower_needs(
    start_worker: Callable[..., Any], flower: Flower, publisher: EventBus
) -> None:
    # Given a subscriber started with plain `celery -A billing worker` (no -E)
    worker = start_worker(BILLING)
    assert ".> task events: ON" in worker.log()

    # When an event is published and handled
    result = publisher.publish("order.created", {"order_id": 5, "total": "9.90"})
    (delivery,) = result.deliveries

    # Then Flower shows the delivery under the event name and the handler
    task = flower_task(flower, delivery.task_id, "SUCCESS")
    assert task["name"] == "order.created → billing.charge"
    # with the envelope as its argument: event id, source and data
    assert result.event.id in task["args"]
    assert "'source': 'shop'" in task["args"]
    assert "'data': {'order_id': 5, 'total': '9.90'}" in task["args"]
    # and what the worker reported along the way
    assert task["worker"].startswith("celery@")
    assert task["received"] <= task["started"] <= task["succeeded"]
    assert task["retries"] == 0 and task["exception"] is None
    # and, from the publisher, when it was sent (its task-sent event may come in last)
    sent = wait_until(lambda: flower.task(delivery.task_id)["sent"], what="the task-sent event")
    assert result.event.time.timestamp() <= sent <= task["received"]


def test_a_failing_handler_shows_its_exception_and_traceback(
    start_worker: Callable[..., Any], flower: Flower, publisher: EventBus
) -> None:
    # Given a subscriber whose handler raises
    start_worker(BILLING)

    # When its event is published
    (delivery,) = publisher.publish("order.cancelled", {"order_id": 8}).deliveries

    # Then Flower shows the delivery as failed, with the handler's exception and traceback
    task = flower_task(flower, delivery.task_id, "FAILURE")
    assert task["name"] == "order.cancelled → billing.refund"
    assert task["exception"] == "RuntimeError('order 8 was never charged')"
    assert "in refund" in task["traceback"]
    assert "RuntimeError: order 8 was never charged" in task["traceback"]
    assert task["failed"] >= task["started"]


def test_a_retried_delivery_shows_as_retry_then_its_final_state(
    start_worker: Callable[..., Any], flower: Flower, publisher: EventBus
) -> None:
    # Given a handler that fails once and retries after 3 seconds
    start_worker(BILLING)

    # When its event is published
    (delivery,) = publisher.publish("payment.settled", {"failures": 1}).deliveries

    # Then Flower first shows the delivery waiting for its retry, with the error
    retrying = flower_task(flower, delivery.task_id, "RETRY")
    assert retrying["name"] == "payment.settled → billing.settle"
    assert retrying["exception"] == "ConnectionError('payment gateway busy (attempt 1)')"
    assert retrying["retried"] is not None

    # And then as succeeded, one retry later, under the same task id
    done = flower_task(flower, delivery.task_id, "SUCCESS")
    assert done["name"] == "payment.settled → billing.settle"
    assert done["retries"] == 1
    assert done["succeeded"] > retrying["retried"]


def test_a_delivery_that_uses_up_its_retries_fails_with_the_last_error(
    start_worker: Callable[..., Any], flower: Flower, publisher: EventBus
) -> None:
    # Given a handler allowed 3 retries, and events that fail 2 and 10 times
    start_worker(BILLING)
    (recovers,) = publisher.publish("payment.requested", {"failures": 2}).deliveries
    (gives_up,) = publisher.publish("payment.requested", {"failures": 10}).deliveries

    # Then the first succeeds after two retries
    assert flower_task(flower, recovers.task_id, "SUCCESS")["retries"] == 2
    # and the second fails after three, with the fourth attempt's exception and traceback
    failed = flower_task(flower, gives_up.task_id, "FAILURE")
    assert failed["name"] == "payment.requested → billing.collect"
    assert failed["retries"] == 3
    assert failed["exception"] == "ConnectionError('payment gateway busy (attempt 4)')"
    assert "in collect" in failed["traceback"]
    # and the search by state finds it among the failures
    assert gives_up.task_id in flower.tasks(search="state:FAILURE name:payment.requested")


def test_flowers_search_filters_deliveries_by_event_name(
    start_worker: Callable[..., Any], flower: Flower, publisher: EventBus
) -> None:
    # Given deliveries of two event names in Flower
    start_worker(BILLING)
    created = [publisher.publish("order.created", {"order_id": i}) for i in range(3)]
    (cancelled,) = publisher.publish("order.cancelled", {"order_id": 9}).deliveries
    created_ids = {r.deliveries[0].task_id for r in created}
    # (until a worker reports a delivery, Flower knows it from its task-sent event, which
    # names the handler's task only, as Celery's own do)
    for task_id in created_ids:
        flower_task(flower, task_id, "SUCCESS")
    flower_task(flower, cancelled.task_id, "FAILURE")

    # When a user searches for an event name, as typed in Flower's search box
    by_name = flower.tasks(search="order.created")
    qualified = flower.tasks(search="name:order.cancelled")
    # and as the task list page asks for it
    page = flower.get(
        "/tasks/datatable", draw=1, start=0, length=15, **{
            "search[value]": "order.created",
            "order[0][column]": 0, "order[0][dir]": "asc", "columns[0][data]": "name",
        },
    )

    # Then only that event's deliveries are listed
    assert set(by_name) == created_ids
    assert set(qualified) == {cancelled.task_id}
    assert {row["uuid"] for row in page["data"]} == created_ids
    assert page["recordsFiltered"] == 3


def test_the_task_events_setting_turns_them_off(start_worker: Callable[..., Any]) -> None:
    # Given the billing service started with task_events=False
    worker = start_worker(BILLING, env={"BILLING_TASK_EVENTS": "0"})

    # Then its worker sends no task events, as Celery's default is
    assert ".> task events: OFF" in worker.log()


def test_flower_answers_401_without_the_password(flower: Flower) -> None:
    assert flower.status_without_auth("/api/tasks") == 401
    assert flower.status_without_auth("/healthcheck") == 200


def test_the_flower_task_list_shows_deliveries_in_a_browser(
    start_worker: Callable[..., Any], flower: Flower, publisher: EventBus, tmp_path: Path
) -> None:
    binary = chromium_or_skip()

    # Given deliveries that succeeded and failed, as Flower reports them
    start_worker(BILLING)
    shown = [
        publisher.publish("order.created", {"order_id": 1}).deliveries[0],
        publisher.publish("order.cancelled", {"order_id": 2}).deliveries[0],
        publisher.publish("payment.requested", {"failures": 1}).deliveries[0],
        publisher.publish("order.created", {"order_id": 3}).deliveries[0],
    ]
    for delivery, state in zip(shown, ["SUCCESS", "FAILURE", "SUCCESS", "SUCCESS"], strict=True):
        flower_task(flower, delivery.task_id, state)

    # When a user logs in to Flower and opens the task list
    page = f"http://user:pass@127.0.0.1:{flower.port}/tasks"
    budget = "--virtual-time-budget=10000"  # lets the page load its rows before the snapshot
    dom = chromium(binary, tmp_path / "profile-dom", budget, "--dump-dom", page)
    screenshot = tmp_path / "flower.png"
    chromium(
        binary, tmp_path / "profile-shot", budget, "--window-size=1440,560",
        f"--screenshot={screenshot}", page,
    )

    # Then every delivery is listed with its event name, handler and task id
    assert "order.created → billing.charge" in dom
    assert "order.cancelled → billing.refund" in dom
    assert "payment.requested → billing.collect" in dom
    for delivery in shown:
        assert delivery.task_id in dom
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("UPDATE_FLOWER_SCREENSHOT"):
        shutil.copyfile(screenshot, ROOT / "docs" / "images" / "flower.png")

    # And a delivery's own page shows its envelope and, when it failed, the traceback
    failed = chromium(
        binary, tmp_path / "profile-task", budget, "--dump-dom",
        f"http://user:pass@127.0.0.1:{flower.port}/task/{shown[1].task_id}",
    )
    assert "order.cancelled → billing.refund" in failed
    assert "RuntimeError: order 2 was never charged" in failed


def test_a_delivery_no_worker_took_yet_is_found_by_its_event_name(
    flower: Flower, publisher: EventBus
) -> None:
    # Given a subscriber that registered and is not running
    subscriber = subprocess.run(
        [sys.executable, "-m", "celery", "-A", BILLING, "eventbus", "register"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert subscriber.returncode == 0, subscriber.stderr

    # When an event for it is published
    (waiting,) = publisher.publish("order.created", {"order_id": 12}).deliveries

    # Then Flower lists the delivery from its task-sent event, under the handler's task name
    # (a task-sent event names the task, as Celery's own do; the worker's events name the
    # event), and the search for the event name finds it through its envelope
    def listed() -> dict[str, Any] | None:
        return flower.tasks(search="order.created").get(waiting.task_id)

    task = wait_until(listed, timeout=30, interval=0.2, what="the waiting delivery in Flower")
    assert task["state"] == "PENDING" and task["sent"] is not None
    assert task["name"] in ("billing.charge", "order.created → billing.charge")
    assert "'type': 'order.created'" in task["args"]
