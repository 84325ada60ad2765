"""The users service's Celery app and event bus, shared by its web process and its worker.

Run the worker with ``celery -A users.events worker``: it consumes ``events.users`` and runs
the handler below.
"""

from __future__ import annotations

import os

from celery import Celery

from celery_events import Event, EventBus

from . import db

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")

celery = Celery("users", broker=BROKER_URL)
bus = EventBus(celery, service="users")


@bus.subscribe("order.created")
def remember_welcome_order(event: Event) -> None:
    """Note on the user which order the orders service created to welcome them.

    Idempotent: a redelivery writes the same value again.
    """
    if event.data.get("kind") != "welcome":
        return
    with db.transaction() as connection:
        connection.execute(
            "UPDATE users SET welcome_order_id = ? WHERE id = ?",
            (event.data["order_id"], event.data["user_id"]),
        )
