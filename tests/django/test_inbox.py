"""The database inbox on PostgreSQL: an atomic handler's effects commit once per event."""

from __future__ import annotations

import threading

import pytest
from django.db import connections
from django.test import override_settings

from celery_events import Event
from celery_events.contrib.django.inbox import run_atomic
from celery_events.contrib.django.models import InboxEntry

from ..harness import wait_until
from .conftest import BOTH
from .settings import CELERY_EVENTS
from .warehouse.models import Shipment

pytestmark = [
    pytest.mark.django_db(transaction=True, databases=BOTH),
    pytest.mark.integration,
]
HANDLER = "warehouse.ship"


@pytest.fixture(autouse=True)
def inbox_in_postgres():
    with override_settings(CELERY_EVENTS={**CELERY_EVENTS, "database": "pg"}):
        yield


def ship(event: Event) -> None:
    Shipment.objects.create(order_id=event.data["order_id"], event_id=event.id)


def test_a_repeated_delivery_is_skipped_without_calling_the_handler() -> None:
    event = Event.create("order.placed", {"order_id": 1}, source="shop")
    assert run_atomic(HANDLER, event, lambda: ship(event)) is True
    assert run_atomic(HANDLER, event, lambda: ship(event)) is False
    assert Shipment.objects.count() == 1
    [entry] = InboxEntry.objects.using("pg").all()
    assert (entry.event_id, entry.handler, entry.event_name) == (event.id, HANDLER, "order.placed")
    # Another handler of the same event has its own inbox row
    assert run_atomic("warehouse.other", event, lambda: None) is True


def test_a_failing_handler_rolls_back_its_effects_and_its_inbox_row() -> None:
    event = Event.create("order.placed", {"order_id": 2}, source="shop")

    def ship_then_fail() -> None:
        ship(event)
        raise RuntimeError("carrier down")

    with pytest.raises(RuntimeError):
        run_atomic(HANDLER, event, ship_then_fail)
    assert Shipment.objects.count() == 0 and InboxEntry.objects.using("pg").count() == 0
    # So the retry runs it again
    assert run_atomic(HANDLER, event, lambda: ship(event)) is True
    assert Shipment.objects.count() == 1


def test_two_deliveries_of_one_event_at_the_same_moment_commit_one_effect() -> None:
    # Given a delivery whose handler is still running (its transaction open)
    event = Event.create("order.placed", {"order_id": 3}, source="shop")
    release = threading.Event()
    results: dict[str, bool] = {}

    def slow_ship() -> None:
        ship(event)
        release.wait(30)

    def deliver(name: str, call) -> None:
        try:
            results[name] = run_atomic(HANDLER, event, call)
        finally:
            connections.close_all()

    first = threading.Thread(target=deliver, args=("first", slow_ship))
    first.start()
    wait_until(lambda: InboxEntry.objects.using("pg").count() == 0 and _in_transaction(1))
    # When a second delivery of the same event starts, it waits on the first one's inbox row
    second = threading.Thread(target=deliver, args=("second", lambda: ship(event)))
    second.start()
    wait_until(_waiting_on_a_lock, what="the second delivery to wait for the first")
    release.set()
    first.join(30)
    second.join(30)
    # Then the first commits the effect and the second skips it
    assert results == {"first": True, "second": False}
    assert Shipment.objects.count() == 1


def _in_transaction(count: int) -> bool:
    with connections["pg"].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE state = 'idle in transaction' AND datname = current_database()"
        )
        return bool(cursor.fetchone()[0] >= count)


def _waiting_on_a_lock() -> bool:
    with connections["pg"].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return bool(cursor.fetchone()[0])
