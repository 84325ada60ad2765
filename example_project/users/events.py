"""The users service's event handlers, on the Flask extension.

They run in the worker inside the Flask app's context, so they read the app's configuration
(``current_app.config``) like views do.
"""

from __future__ import annotations

from flask import current_app

from celery_events import Event
from celery_events.contrib.flask import CeleryEvents

from . import db

events = CeleryEvents()


@events.subscribe("order.created")
def remember_welcome_order(event: Event) -> None:
    """Note on the user which order the orders service created to welcome them.

    Idempotent: a repeated delivery writes the same value again.
    """
    if event.data.get("kind") != "welcome":
        return
    with db.transaction(current_app.config["USERS_DATABASE"]) as connection:
        connection.execute(
            "UPDATE users SET welcome_order_id = ? WHERE id = ?",
            (event.data["order_id"], event.data["user_id"]),
        )
