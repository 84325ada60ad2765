"""A worker's main process keeps nothing per delivery once the delivery is done.

Every delivery runs under a hard time limit (300 s by default), which Celery's prefork pool
enforces with an entry on the worker's event-loop timer and cancels when the delivery ends;
kombu's timer keeps a cancelled entry until its time comes, about 500 bytes each. The bus's
worker sweeps them off (celery_events/_timers.py): a real worker, real deliveries, and the
worker's own count of its timer entries.
"""

from __future__ import annotations

from collections.abc import Callable

import redis
from celery import Celery

from celery_events import EventBus

from ..harness import RedisServer, Worker, wait_until

TIMED = "tests.services.timed"
HANDLED_KEY = "test:timed:handled"  # counted by the service's handler
DELIVERIES = 1_000


def timer_entries(app: Celery) -> int:
    replies = app.control.broadcast("timer_entries", reply=True, timeout=5)
    assert len(replies) == 1, replies
    [count] = replies[0].values()
    return int(count)


def deliver(publisher: EventBus, client: redis.Redis, count: int) -> None:
    """Publish ``count`` events and wait until the worker has handled them all."""
    client.delete(HANDLED_KEY)
    publisher.publish_many([("order.placed", {"n": n}) for n in range(count)])
    wait_until(
        lambda: int(client.get(HANDLED_KEY) or 0) == count,
        timeout=120,
        what=f"{count} deliveries handled",
    )


def test_a_worker_keeps_no_timer_entry_per_delivery_it_handled(
    start_worker: Callable[..., Worker], publisher: EventBus, redis_client: redis.Redis
) -> None:
    # Given a worker of the `timed` service (prefork, one process, 300 s time limits)
    start_worker(TIMED)
    before = timer_entries(publisher.app)

    # When it has handled a thousand deliveries
    deliver(publisher, redis_client, DELIVERIES)

    # Then its timer holds what it held before, not one entry per delivery (their time
    # limits end 300 s from now)
    wait_until(
        lambda: timer_entries(publisher.app) <= before + 5,
        timeout=10,
        what="the cancelled time limits swept off the worker's timer",
    )


def test_the_sweep_goes_on_after_the_worker_reconnects(
    start_worker: Callable[..., Worker], publisher: EventBus, redis_server: RedisServer
) -> None:
    # Given a worker whose broker restarted under it (its consumer starts again)
    worker = start_worker(TIMED)
    redis_server.restart()
    client = redis_server.client()
    wait_until(lambda: _answers(publisher.app), timeout=30, what="the worker back on Redis")
    assert "Connection to broker lost" in worker.log()
    before = timer_entries(publisher.app)

    # When it handles deliveries on the new connection
    deliver(publisher, client, DELIVERIES // 2)

    # Then their cancelled time limits are swept off as before
    wait_until(
        lambda: timer_entries(publisher.app) <= before + 5,
        timeout=10,
        what="the cancelled time limits swept off the worker's timer",
    )
    assert worker.process.poll() is None


def _answers(app: Celery) -> bool:
    try:
        return bool(app.control.broadcast("timer_entries", reply=True, timeout=1))
    except Exception:  # Redis still restarting
        return False
