"""The orders service's event handlers."""

from __future__ import annotations

from django.db import transaction

from celery_events import Event

from .celery import bus
from .models import Order


@bus.subscribe("user.registered")
def welcome_order(event: Event) -> None:
    """Create the new user's welcome order and announce it with ``order.created``.

    ``order.created`` is published from inside this handler, so it carries the correlation id
    of the ``user.registered`` that caused it and names that event as its cause.
    """
    user_id = int(event.data["user_id"])
    with transaction.atomic():
        order, created = Order.objects.get_or_create(
            user_id=user_id,
            kind="welcome",
            defaults={"cause_event_id": event.id, "correlation_id": event.correlation_id},
        )
        if created:
            data = {"order_id": order.id, "user_id": user_id, "kind": "welcome"}
            transaction.on_commit(lambda: bus.publish("order.created", data))
