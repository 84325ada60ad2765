"""The warehouse's handlers, found by the Django app's autodiscovery."""

from celery_events import Event
from celery_events.contrib.django import bus

from ...services._effects import record
from .models import Shipment


@bus.subscribe("order.placed", atomic=True)
def ship(event: Event) -> None:
    Shipment.objects.create(order_id=event.data["order_id"], event_id=event.id)
    record("warehouse.ship", event)
    if event.data.get("fail"):
        raise RuntimeError(f"order {event.data['order_id']} cannot ship")


@bus.subscribe("order.#")
def count_orders(event: Event) -> None:
    record("warehouse.count_orders", event)
