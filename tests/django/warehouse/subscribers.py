"""The warehouse's handlers, found by the Django app's autodiscovery."""

import os
import signal
import time
from pathlib import Path

import redis

from celery_events import Event
from celery_events.contrib.django import bus

from ...services._effects import broker_url, record
from .models import Shipment


# inbox=False turns off the Redis inbox, so that only the database inbox stands between a
# repeated delivery and a second shipment.
@bus.subscribe("order.placed", atomic=True, inbox=False, retry_backoff=0.2, retry_jitter=False)
def ship(event: Event) -> None:
    Shipment.objects.create(order_id=event.data["order_id"], event_id=event.id)
    record("warehouse.ship", event)
    if event.data.get("fail_once"):
        attempt = redis.Redis.from_url(broker_url()).incr(f"test:attempts:{event.id}")
        if attempt == 1:
            raise RuntimeError(f"order {event.data['order_id']} cannot ship yet")


@bus.subscribe("order.#")
def count_orders(event: Event) -> None:
    record("warehouse.count_orders", event)


# Only in workers whose state store is the database (test_state_worker.py), so that the other
# tests see the two handlers above.
if os.environ.get("CELERY_EVENTS_TEST_STATE") == "database":

    @bus.subscribe("crate.#", max_retries=2, retry_backoff=0.2, retry_jitter=False)
    def pack(event: Event) -> None:
        client = redis.Redis.from_url(broker_url())
        client.rpush(f"test:started:{event.id}", os.getpid())
        if event.data.get("crash"):
            os.kill(os.getpid(), signal.SIGKILL)
        if event.data.get("sleep"):
            time.sleep(event.data["sleep"])  # a slow handler, to be killed while it runs
        if client.exists(f"test:fail:{event.id}"):
            raise RuntimeError(f"crate {event.data.get('crate')} cannot be packed")
        record("warehouse.pack", event)


# Only in workers of a fleet without Redis (test_rabbitmq_database.py): the effect is a row in
# the database, and the test's notes are files, so that nothing here needs a Redis.
if os.environ.get("CELERY_EVENTS_TEST_NO_REDIS") == "1":

    @bus.subscribe("parcel.#", max_retries=2, retry_backoff=0.2, retry_jitter=False)
    def stow(event: Event) -> None:
        notes = Path(os.environ["CELERY_EVENTS_TEST_NOTES"])
        with open(notes / f"{event.id}.runs", "a") as runs:
            runs.write(f"{os.getpid()}\n")
        if (notes / f"{event.id}.fail").exists():
            raise RuntimeError(f"parcel {event.data['parcel']} cannot be stowed")
        Shipment.objects.create(order_id=event.data["parcel"], event_id=event.id)
