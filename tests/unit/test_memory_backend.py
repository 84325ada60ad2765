"""The memory backend: deliveries run through the real delivery path in this process (a Celery
test worker on kombu's memory transport), with the inbox, retries and dead letters."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from celery_events import Event, EventBus
from celery_events.backends import memory
from celery_events.backends.base import lease_value

from ..harness import wait_until

#: The time of the event the inbox is asked about directly.
T = 1_700_000_000.0


@pytest.fixture(autouse=True)
def _fresh_memory() -> Iterator[None]:
    memory.reset()
    yield
    memory.reset()


def make_bus(name: str, **settings: object) -> EventBus:
    app = Celery(name, broker="memory://", set_as_current=False)
    # kombu polls its in-memory queues once a second by default.
    app.conf.broker_transport_options = {"polling_interval": 0.01}
    return EventBus(app, service=name, **settings)


def test_a_delivery_is_handled_retried_and_dead_lettered_in_process() -> None:
    # Given a subscriber on memory:// whose handler fails on some events
    bus = make_bus("shop", retry_backoff=0.01, retry_backoff_max=0.05, max_retries=2)
    seen: list[dict[str, object]] = []

    @bus.subscribe("order.*")
    def on_order(event: Event) -> None:
        seen.append(event.data)
        if event.data.get("fail"):
            raise RuntimeError("card declined")

    bus.register()
    for queue in bus.queues:
        bus.app.amqp.queues.select_add(queue)

    # When a good and a failing event are published, with a worker in this process
    with start_worker(bus.app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
        bus.publish("order.created", {"id": 1})
        bus.publish("order.created", {"id": 2, "fail": True})
        wait_until(lambda: bus.dead_letters.count() == 1, timeout=15, what="a dead letter")

    # Then the good one ran once, the failing one 1 + 2 retries, then gave up
    assert seen.count({"id": 1}) == 1
    assert seen.count({"id": 2, "fail": True}) == 3
    (letter,) = bus.dead_letters.list()
    assert letter.reason == "retries_exhausted" and letter.attempts == 3
    assert letter.error_message == "card declined"


def test_buses_of_one_process_share_the_registry_of_their_memory_space() -> None:
    publisher, subscriber = make_bus("orders"), make_bus("billing")
    subscriber.subscribe("order.created", name="invoice")(lambda event: None)
    subscriber.register()
    result = publisher.publish("order.created", {"id": 1})
    assert [(d.service, d.handler) for d in result.deliveries] == [("billing", "billing.invoice")]
    assert [s.handler for s in make_bus("other").registry.subscriptions()] == ["billing.invoice"]


def test_the_memory_inbox_runs_a_delivery_once_and_skips_a_copy() -> None:
    inbox = make_bus("shop").inbox
    lease = lease_value("t1", inbox.process_token())
    claim = inbox.claim(
        "shop.h", "e1", "t1", event_time=T, lease=lease, lease_seconds=30, use_inbox=True
    )
    assert claim.status == "run" and claim.starts == 1
    busy = inbox.claim(
        "shop.h", "e1", "t2", event_time=T, lease="other", lease_seconds=30, use_inbox=True
    )
    assert busy.status == "busy" and busy.holder == lease
    assert inbox.succeed(
        "shop.h", "e1", "t1", event_time=T, lease=lease, use_inbox=True, ttl_seconds=60
    )
    assert inbox.is_done("shop.h", "e1", event_time=T)
    again = inbox.claim(
        "shop.h", "e1", "t3", event_time=T, lease="x", lease_seconds=30, use_inbox=True
    )
    assert again.status == "done"


def test_the_memory_inbox_counts_failures_across_runs() -> None:
    inbox = make_bus("shop").inbox
    for expected in (1, 2):
        lease = lease_value("t1", inbox.process_token())
        claim = inbox.claim(
            "shop.h", "e1", "t1", event_time=T, lease=lease, lease_seconds=30, use_inbox=True
        )
        assert claim.failures == expected - 1
        assert inbox.release("shop.h", "e1", "t1", lease=lease, failed=True) == expected
