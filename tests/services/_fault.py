"""Subscriber services for the fault-injection suite.

Every handler records its effect with ``bus.redis_effects()``; some events are designed to fail:
``fail: reject`` is rejected by ``consume``, ``fail: exhaust`` always fails in ``audit`` (retries
then dead letter), and ``flaky: n`` fails ``n`` times before it succeeds.
"""

from __future__ import annotations

import json
import os
import random
import time

import redis
from celery import Celery

from celery_events import Event, EventBus, Reject

from ._effects import EFFECTS_KEY, broker_url


def make_service(service: str) -> tuple[Celery, EventBus]:
    state = os.environ.get("CELERY_EVENTS_TEST_STATE")
    app = Celery(service, broker=broker_url())
    app.conf.broker_transport_options = {"visibility_timeout": 20}
    bus = EventBus(
        app,
        service=service,
        registry_url=state,
        max_retries=2,
        retry_backoff=0.05,
        retry_backoff_max=1.0,
        handler_time_limit=5,
        max_deliveries=10,
        redelivery_timeout=3.0,
        sweep_interval=0.5,
    )
    client = redis.Redis.from_url(state or broker_url())

    def effect(handler: str, event: Event) -> None:
        # Work long enough for kills to land inside handlers too.
        time.sleep(random.uniform(0, 0.01))
        bus.redis_effects().rpush(
            EFFECTS_KEY, json.dumps({"handler": handler, "event_id": event.id})
        )

    @bus.subscribe("fault.#")
    def consume(event: Event) -> None:
        if event.data.get("fail") == "reject":
            raise Reject("deliberate rejection")
        flaky = int(event.data.get("flaky", 0))
        if flaky and client.incr(f"test:flaky:{service}.consume:{event.id}") <= flaky:
            raise ConnectionError("deliberate transient failure")
        effect(f"{service}.consume", event)

    @bus.subscribe("fault.*.audited")
    def audit(event: Event) -> None:
        if event.data.get("fail") == "exhaust":
            raise RuntimeError("deliberate permanent failure")
        effect(f"{service}.audit", event)

    return app, bus
