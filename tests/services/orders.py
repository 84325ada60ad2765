"""A subscriber with two handlers, one of them on a wildcard; it publishes from a handler."""

import os

from celery import Celery

from celery_events import Event, EventBus

from ._effects import broker_url, record

app = Celery("orders", broker=broker_url())
bus = EventBus(app, service="orders")


@bus.subscribe("user.registered")
def welcome_order(event: Event) -> None:
    record("orders.welcome_order", event)
    if event.data.get("chain"):
        bus.publish("order.created", {"user_id": event.data.get("user_id")})


if not os.environ.get("ORDERS_WITHOUT_AUDIT"):

    @bus.subscribe("user.*")
    def audit_users(event: Event) -> None:
        record("orders.audit_users", event)
