"""The third service of the traced chain: charges each created order, failing the first
time (the bank times out) and succeeding on its retry."""

from __future__ import annotations

import redis
from celery import Celery

from celery_events import Event, EventBus

from ._effects import broker_url

app = Celery("trace_billing", broker=broker_url())
bus = EventBus(
    app, service="trace_billing", trace_records=True, retry_jitter=False, retry_backoff=0.2
)
client = redis.Redis.from_url(broker_url())


@bus.subscribe("order.created", max_retries=3)
def charge(event: Event) -> None:
    if client.incr(f"test:charge:{event.id}") == 1:
        raise TimeoutError("the bank timed out")
