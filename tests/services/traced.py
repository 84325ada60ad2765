"""A subscriber with tracing on, exporting its spans to the file ``CELERY_EVENTS_TEST_SPANS``
names; with ``CELERY_EVENTS_TEST_INSTRUMENT=1`` Celery's own OpenTelemetry instrumentation is
installed too, in every pool process, as its documentation says.

Its handler fails as the event's data says: ``fail_times`` runs, or every run while the Redis
key ``test:broken`` is set (a dead letter, fixed and replayed later).
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_process_init

from celery_events import Event, EventBus

from . import _spans
from ._effects import broker_url, record

_spans.configure()

app = Celery("traced", broker=broker_url())
bus = EventBus(
    app,
    service="traced",
    tracing=True,
    max_retries=1,
    retry_backoff=0.05,
    retry_jitter=False,
)
client = redis.Redis.from_url(broker_url())


@worker_process_init.connect(weak=False)
def _instrument(**kwargs: Any) -> None:
    if os.environ.get("CELERY_EVENTS_TEST_INSTRUMENT") == "1":
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()


@bus.subscribe("parcel.#")
def ship(event: Event) -> None:
    fail_times = int(event.data.get("fail_times", 0))
    if fail_times and client.incr(f"test:failures:{event.id}") <= fail_times:
        raise ConnectionError("the carrier is down")
    if event.data.get("broken") and client.get("test:broken"):
        raise ValueError("no label printer")
    record("traced.ship", event)
