"""``apublish`` on a backend whose driver has no asyncio API (kombu's memory transport): the
blocking send runs in a worker thread, with publish's results and errors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from celery import Celery, signals
from celery.contrib.testing.worker import start_worker

from celery_events import Event, EventBus, NoSubscribersError
from celery_events.backends import memory

from ..harness import wait_until


@pytest.fixture(autouse=True)
def _fresh_memory() -> Iterator[None]:
    memory.reset()
    yield
    memory.reset()


def make_bus(name: str) -> EventBus:
    app = Celery(name, broker="memory://", set_as_current=False)
    app.conf.broker_transport_options = {"polling_interval": 0.01}
    return EventBus(app, service=name)


def test_apublish_on_memory_sends_from_a_worker_thread_and_the_handler_runs() -> None:
    # Given a subscriber on memory://
    bus = make_bus("shop")
    seen: list[dict[str, object]] = []

    @bus.subscribe("order.*")
    def on_order(event: Event) -> None:
        seen.append(event.data)

    bus.register()
    for queue in bus.queues:
        bus.app.amqp.queues.select_add(queue)
    senders: list[int] = []

    def sending(**_: object) -> None:
        senders.append(threading.get_ident())

    signals.before_task_publish.connect(sending, weak=False)

    # When a coroutine apublishes one event and apublish_many two more
    async def main() -> tuple[int, list[int]]:
        one = await bus.apublish("order.created", {"id": 1})
        many = await bus.apublish_many([("order.created", {"id": 2}), ("order.paid", {"id": 3})])
        return threading.get_ident(), [len(r.deliveries) for r in (one, *many)]

    try:
        with start_worker(bus.app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
            loop_thread, deliveries = asyncio.run(main())
            wait_until(lambda: len(seen) == 3, timeout=15, what="three handled events")
    finally:
        signals.before_task_publish.disconnect(sending)
        bus.close()

    # Then each was delivered once, sent by a thread other than the loop's
    assert deliveries == [1, 1, 1]
    assert sorted(d["id"] for d in seen) == [1, 2, 3]
    assert senders and loop_thread not in senders


def test_apublish_raises_publishs_errors() -> None:
    bus = make_bus("shop")
    try:
        with pytest.raises(NoSubscribersError) as caught:
            asyncio.run(bus.apublish("nobody.listens", {}, require_subscribers=True))
        with pytest.raises(NoSubscribersError) as sync:
            bus.publish("nobody.listens", {}, require_subscribers=True)
        assert str(caught.value) == str(sync.value)
        assert asyncio.run(bus.apublish_many([])) == []
    finally:
        bus.close()
