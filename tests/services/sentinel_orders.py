"""A subscriber on a Sentinel-watched Redis (CELERY_EVENTS_TEST_BROKER, a sentinel:// list,
and CELERY_EVENTS_TEST_MASTER, its master_name).

Each handler writes its effect with ``bus.redis_effects()``: committed on the primary in one
transaction with its inbox record, so a failover that loses one loses the other with it, and
the effects the test counts on the surviving primary are exactly the handled deliveries.
"""

from __future__ import annotations

import json
import os

from celery import Celery

from celery_events import Event, EventBus

EFFECTS_KEY = "test:effects"

app = Celery("sentinel_orders", broker=os.environ["CELERY_EVENTS_TEST_BROKER"])
app.conf.broker_transport_options = {"master_name": os.environ["CELERY_EVENTS_TEST_MASTER"]}
bus = EventBus(
    app,
    service="sentinel_orders",
    max_retries=5,
    retry_backoff=0.05,
    retry_backoff_max=0.5,
    retry_jitter=False,
    handler_time_limit=10,
    max_deliveries=5,
    redelivery_timeout=2.0,
    sweep_interval=0.5,
)


def effect(handler: str, event: Event) -> None:
    bus.redis_effects().rpush(
        EFFECTS_KEY, json.dumps({"handler": handler, "event_id": event.id, "data": event.data})
    )


@bus.subscribe("order.#")
def ship(event: Event) -> None:
    effect("ship", event)


@bus.subscribe("order.placed")
def bill(event: Event) -> None:
    effect("bill", event)
