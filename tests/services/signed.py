"""A subscriber, ``ledger``, that checks signatures (tests/integration/test_signing.py).

``SIGNED_TRUSTED`` is its trusted_keys directory (unset: signing off), ``SIGNED_KEY`` its own
signing_key (it signs its registry record, which publishers that check signatures believe only
signed), ``SIGNED_MAX_AGE`` its
signature_max_age, ``SIGNED_REQUIRE`` its require_signatures (``0``/``1``; unset: the default).
Every run of its handler is noted in ``test:runs`` with the envelope's signature; a run that
took effect is recorded in ``test:effects``. The handler fails while ``test:broken`` is set,
and the first ``fail_times`` runs of an event whose data says so.
"""

from __future__ import annotations

import json
import os

import redis
from celery import Celery

from celery_events import Event, EventBus

from ._effects import broker_url, record

RUNS_KEY = "test:runs"
BROKEN_KEY = "test:broken"

settings: dict[str, object] = {}
if os.environ.get("SIGNED_TRUSTED"):
    settings["trusted_keys"] = os.environ["SIGNED_TRUSTED"]
if os.environ.get("SIGNED_KEY"):
    settings["signing_key"] = os.environ["SIGNED_KEY"]
if os.environ.get("SIGNED_MAX_AGE"):
    settings["signature_max_age"] = float(os.environ["SIGNED_MAX_AGE"])
if os.environ.get("SIGNED_REQUIRE"):
    settings["require_signatures"] = os.environ["SIGNED_REQUIRE"] == "1"

app = Celery("ledger", broker=broker_url())
bus = EventBus(
    app,
    service="ledger",
    max_retries=2,
    retry_backoff=0.05,
    retry_backoff_max=0.2,
    retry_jitter=False,
    **settings,
)
client = redis.Redis.from_url(broker_url())


@bus.subscribe("payment.#")
def settle(event: Event) -> None:
    task = app.current_worker_task
    client.rpush(
        RUNS_KEY,
        json.dumps({
            "event_id": event.id,
            "source": event.source,
            "signature": event.extensions.get("signature"),
            "retries": task.request.retries if task is not None else None,
        }),
    )
    if client.get(BROKEN_KEY):
        raise RuntimeError("the ledger database is down")
    fail_times = event.data.get("fail_times")
    if fail_times and client.incr(f"test:failures:{event.id}") <= int(fail_times):
        raise ConnectionError("the ledger database timed out")
    record("ledger.settle", event)
