"""The orders service's event handlers, found at start-up by the Django integration, and the
contract of the event it publishes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from celery_events import Event
from celery_events.contrib.django import bus

from .models import Order


class OrderCreated(BaseModel):
    """order.created v1: an order exists (subscribers read this schema from the registry or
    contracts.json, never this class)."""

    order_id: int = Field(ge=1)
    user_id: int = Field(ge=1)
    kind: Literal["welcome", "regular"]


bus.declare("order.created", schema=OrderCreated)


@bus.subscribe("user.registered", atomic=True)
def welcome_order(event: Event) -> None:
    """Create the new user's welcome order and announce it with ``order.created``.

    ``atomic=True``: the handler runs in a database transaction that also records the delivery
    in the inbox table, so a repeated delivery creates no second order. ``order.created`` goes
    to the outbox table in that same transaction (``"outbox": True``), so it exists exactly
    when the order does; the relay in the worker sends it. Published from inside the handler,
    it carries the correlation id of the ``user.registered`` and names it as its cause.
    """
    order = Order.objects.create(
        user_id=int(event.data["user_id"]),
        kind="welcome",
        cause_event_id=event.id,
        correlation_id=event.correlation_id,
    )
    bus.publish("order.created", {"order_id": order.id, "user_id": order.user_id, "kind": "welcome"})
