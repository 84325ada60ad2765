"""What Flower hears about a delivery: every task-sent event carries the delivery's shown name."""

from __future__ import annotations

import threading
from typing import Any

import redis
from celery import Celery

from celery_events import EventBus

from ..harness import wait_until
from .conftest import effect_counts

FLAKY = "tests.services.flaky"


class Listener:
    """Celery's own event receiver, as Flower runs it, in a thread."""

    def __init__(self, redis_url: str) -> None:
        self.app = Celery("listener", broker=redis_url)
        self.events: list[dict[str, Any]] = []
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self.app.connection_for_read() as connection:
            self._receiver = self.app.events.Receiver(
                connection, handlers={"*": self.events.append}
            )
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def sent(self, task_id: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e["type"] == "task-sent" and e["uuid"] == task_id]

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=10)


def test_a_retried_delivery_is_named_after_its_event_in_every_task_sent_event(
    start_worker, publisher: EventBus, redis_client: redis.Redis, redis_url: str
) -> None:
    listener = Listener(redis_url)
    try:
        # Given a worker whose heartbeat the listener hears (so it is subscribed)
        start_worker(FLAKY)
        wait_until(lambda: any(e["type"] == "worker-heartbeat" for e in listener.events))

        # When a delivery fails twice and is retried by Celery
        result = publisher.publish("work.pay", {"fail_times": 2})
        task_id = next(d.task_id for d in result.deliveries if d.handler == "flaky.work")
        wait_until(lambda: effect_counts(redis_client)[("flaky.work", result.event.id)] == 1)

        # Then its first send and both retries are announced under the delivery's shown name
        sent = wait_until(lambda: len(s := listener.sent(task_id)) == 3 and s, timeout=10)
        assert [e["name"] for e in sent] == ["work.pay → flaky.work"] * 3
        assert [e["retries"] for e in sent] == [0, 1, 2]
    finally:
        listener.stop()
