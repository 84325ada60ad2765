"""A subscriber whose worker says how many entries its event loop's timer holds.

Each delivery runs under a hard time limit, enforced by an entry on that timer; the worker
is asked through Celery's remote control (``timer_entries``), as ``celery inspect`` asks.
"""

from typing import Any

import redis
from celery import Celery
from celery.worker.control import control_command

from celery_events import Event, EventBus

from ._effects import broker_url

HANDLED_KEY = "test:timed:handled"

app = Celery("timed", broker=broker_url())
bus = EventBus(app, service="timed")


@bus.subscribe("order.placed")
def count_order(event: Event) -> None:
    redis.Redis.from_url(broker_url()).incr(HANDLED_KEY)


@control_command()  # type: ignore[misc]
def timer_entries(state: Any) -> int:
    """Entries on the worker's event-loop timer, cancelled ones included."""
    return len(state.consumer.hub.timer)
