"""The users service's event handlers, on the Flask extension.

They run in the worker inside the Flask app's context, so they read the app's configuration
(``current_app.config``) like views do.
"""

from __future__ import annotations

from typing import Literal

from flask import current_app
from pydantic import BaseModel

from celery_events.contrib.flask import CeleryEvents

from . import db

events = CeleryEvents()


# The worker checks each order.created delivery against this model, and `celery eventbus
# check` checks that the schema the orders service declares still fits it: the users service
# knows order.created only by that schema, never by the orders service's code.
class WelcomeOrder(BaseModel):
    """What the users service reads of an order.created event."""

    order_id: int
    user_id: int
    kind: Literal["welcome", "regular"]


@events.subscribe("order.created")
def remember_welcome_order(order: WelcomeOrder) -> None:
    """Note on the user which order the orders service created to welcome them.

    The parameter's pydantic model gets the event's data parsed into it; data it refuses is
    dead-lettered ``schema_mismatch`` before this runs. Idempotent: a repeated delivery writes
    the same value again.
    """
    if order.kind != "welcome":
        return
    with db.transaction(current_app.config["USERS_DATABASE"]) as connection:
        connection.execute(
            "UPDATE users SET welcome_order_id = ? WHERE id = ?",
            (order.order_id, order.user_id),
        )
