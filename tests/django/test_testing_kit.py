"""The testing kit with a Django service: atomic handlers use the real database inbox."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from celery_events import Event
from celery_events.contrib.django import get_bus
from celery_events.testing import HandlerRunner, capture_published

from .warehouse.models import Order, Shipment

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_atomic_handler_runs_in_a_transaction_with_the_database_inbox(bus: Any) -> None:
    # The runner delivers through the project's broker (the test Redis here; memory:// in a
    # project's own tests) and runs each delivery in this process.
    event = Event.create("order.placed", {"order_id": 5}, source="shop")
    # Two runners share nothing but the database: the second is a redelivery elsewhere
    first = HandlerRunner().run(bus, event, handlers=["warehouse.ship"])
    second = HandlerRunner().run(bus, event, handlers=["warehouse.ship"])
    assert [(r.status, r.attempts) for r in first] == [("succeeded", 1)]
    assert [(r.status, r.attempts) for r in second] == [("skipped", 0)]
    assert list(Shipment.objects.values_list("event_id", flat=True)) == [event.id]


def test_a_capture_sees_an_event_when_its_transaction_commits() -> None:
    bus = get_bus()
    with capture_published(bus) as published:
        with transaction.atomic():
            Order.objects.create(reference="C-1")
            result = bus.publish("order.placed", {"order_id": 1})
            assert result.deferred and len(published) == 0
        with pytest.raises(RuntimeError), transaction.atomic():
            bus.publish("order.placed", {"order_id": 2})
            raise RuntimeError("rolled back")
    assert published.events == [result.event]
