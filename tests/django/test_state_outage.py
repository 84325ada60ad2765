"""A PostgreSQL outage never acks a delivery unhandled when the state store is the database.

Given the project's worker with ``CELERY_EVENTS["state"] = "database"`` (inbox, leases and
dead letters in PostgreSQL), 200 events for its ``pack`` handler and 50 ``order.placed``
events for ``count_orders`` and the ``atomic=True`` ``ship`` (whose shipment row and database
inbox row commit in one transaction), when PostgreSQL stops at
in the middle of the stream (a fast shutdown: every session ended, new connections refused)
and starts again 3 s later, then every delivery's effect
(counted in Redis; shipments as rows) happens exactly once, and none is dead-lettered.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import redis
from celery import Celery
from django.db import connections
from django.test import override_settings

from celery_events import Event, EventBus
from celery_events.backends.base import StoreUnavailable
from celery_events.contrib.django.inbox import run_atomic
from celery_events.contrib.django.state import DatabaseState

from ..harness import Worker, wait_until
from ..integration.conftest import effects
from .conftest import BOTH
from .postgres import PostgresServer
from .settings import CELERY_EVENTS
from .warehouse.models import Shipment

pytestmark = [
    pytest.mark.django_db(transaction=True, databases=BOTH),
    pytest.mark.integration,
]

PACK = "warehouse.pack"
COUNT = "warehouse.count_orders"
EVENTS = 200
ORDERS = 50
OUTAGE = 3.0


@pytest.fixture(autouse=True)
def state_in_postgres() -> Iterator[None]:
    with override_settings(CELERY_EVENTS={**CELERY_EVENTS, "database": "pg", "state": "database"}):
        yield


def test_a_postgres_outage_mid_stream_loses_and_repeats_nothing(
    start_django_worker: Callable[..., Worker],
    postgres_server: PostgresServer,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    worker = start_django_worker(env={"CELERY_EVENTS_TEST_STATE": "database"})
    shop = EventBus(Celery("shop", broker=redis_url), service="shop")
    ops = EventBus(Celery("warehouse-ops", broker=redis_url), service="warehouse",
                   state=DatabaseState("pg"))
    try:
        shop.registry.refresh()
        ids: list[str] = []
        orders: list[str] = []
        for n in range(EVENTS):
            ids.append(shop.publish("crate.packed", {"crate": n, "sleep": 0.02}).event.id)
            if n % (EVENTS // ORDERS) == 0:  # among the crates: the outage meets them too
                orders.append(shop.publish("order.placed", {"order_id": n}).event.id)
        wait_until(lambda: len(effects(redis_client)) >= 40, timeout=30, what="the first effects")
        postgres_server.halt()
        at_halt = len(effects(redis_client))
        time.sleep(OUTAGE)  # the outage itself, not a wait for something
        postgres_server.resume()
        connections.close_all()  # this process's connections died with the server

        def handled(handler: str) -> int:
            return sum(1 for e in effects(redis_client) if e["handler"] == handler)

        wait_until(lambda: handled(PACK) >= EVENTS and handled(COUNT) >= ORDERS, timeout=45,
                   what="every effect")
        def not_done() -> list[str]:
            # The database inbox knows a delivery by its event id alone: any time will do.
            return [e for e in ids if not ops.inbox.is_done(PACK, e, event_time=0.0)]

        wait_until(lambda: not not_done(), timeout=20, what="every inbox record")
        wait_until(lambda: all(ops.inbox.is_done(COUNT, e, event_time=0.0) for e in orders),
                   timeout=20, what="every inbox record of count_orders")
        shipped = Counter(Shipment.objects.using("pg").values_list("event_id", flat=True))
        assert shipped == Counter(orders), "an atomic handler's rows were lost or doubled"
        counted = Counter(str(e["event_id"]) for e in effects(redis_client) if e["handler"] == COUNT)
        assert counted == Counter(orders)
        seen = Counter(str(e["event_id"]) for e in effects(redis_client) if e["handler"] == PACK)
        assert at_halt < EVENTS, "the outage came after the stream had ended"
        assert set(seen) == set(ids), f"{len(set(ids) - set(seen))} deliveries never took effect"
        assert not {i: c for i, c in seen.items() if c > 1}, "deliveries took effect twice"
        assert ops.dead_letters.count() == 0
        # The ledger beside the database inbox (in the broker's Redis) is settled too.
        wait_until(lambda: redis_client.hlen("celery_events:ledger:warehouse") == 0, timeout=10)
        log = worker.log()
        assert "the state store is unreachable" in log, "the worker never met the outage"
        assert "the state store is back" in log
    finally:
        shop.close()
        ops.close()


def test_an_unreachable_database_in_an_atomic_handler_is_the_store_away_not_a_failure(
    postgres_server: PostgresServer,
) -> None:
    # The delivery path hands such a delivery back without counting a failure; a deadlock
    # (the database answering) stays the handler's failure.
    event = Event.create("order.placed", {"order_id": 1}, source="shop")
    postgres_server.halt()
    try:
        with pytest.raises(StoreUnavailable):
            run_atomic("warehouse.ship", event, lambda: None)
    finally:
        postgres_server.resume()
        connections.close_all()
    assert run_atomic("warehouse.ship", event, lambda: None)
    assert not run_atomic("warehouse.ship", event, lambda: None)  # recorded once
