"""The users service: a Flask app factory and its HTTP API.

``flask --app users.web run`` serves:

- ``POST /users`` with ``{"email": ..., "name": ...}``: stores the user and publishes
  ``user.registered``; answers 201 with the user, the event id and where it was delivered.
- ``GET /users`` and ``GET /users/<id>``: the stored users.
- ``DELETE /users/<id>``: removes the user and publishes ``user.deleted``.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from celery import Celery
from flask import Flask, abort, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from observability_config import configure_tracing, observability_settings
from trust_config import trust_settings

from celery_events import PublishError, PublishResult

from . import db
from .contracts import UserDeleted, UserRegistered
from .events import events

DATA_DIR = Path(os.environ.get("DEMO_DATA_DIR", Path(__file__).resolve().parent.parent / "var"))


def _published(result: PublishResult) -> dict[str, Any]:
    return {
        "id": result.event.id,
        "name": result.event.name,
        "deliveries": [d.handler for d in result.deliveries],
    }


def _database() -> Path:
    return Path(current_app.config["USERS_DATABASE"])


def create_app() -> Flask:
    app = Flask("users")
    app.config["USERS_DATABASE"] = DATA_DIR / "users.sqlite3"
    # Signed events and scopes on (trust_config.py): the bus signs each event with the users
    # service's own key and checks every delivery's signature and scope before its handler.
    # Traces, metrics on the worker's metrics port and trace records too
    # (observability_config.py); this process's spans go to a file of its own.
    configure_tracing("users")
    app.config["CELERY_EVENTS"] = {
        "service": "users",
        **trust_settings("users"),
        **observability_settings("users"),
    }
    broker = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    # Flask's Celery recipe keeps the Celery app in app.extensions["celery"].
    app.extensions["celery"] = Celery("users", broker=broker)
    events.init_app(app)
    # The contracts of what this service publishes (users/contracts.py). The e-mail address
    # and the name are personal data: every worker shows them as "***" (its log lines,
    # Flower's task rows and its retries).
    bus = events.bus_for(app)
    bus.declare("user.registered", schema=UserRegistered, sensitive=["email", "name"])
    bus.declare("user.deleted", schema=UserDeleted)

    @app.post("/users")
    def register() -> ResponseReturnValue:
        body = request.get_json(silent=True) or {}
        email, name = body.get("email"), body.get("name")
        if not isinstance(email, str) or "@" not in email or not isinstance(name, str):
            return jsonify(error='Send {"email": "ada@example.com", "name": "Ada"}.'), 400
        try:
            with db.transaction(_database()) as connection:
                cursor = connection.execute(
                    "INSERT INTO users (email, name) VALUES (?, ?)", (email, name)
                )
                user_id = cursor.lastrowid
        except sqlite3.IntegrityError:
            return jsonify(error=f"A user with e-mail {email!r} already exists."), 409
        # Published after the commit: subscribers never hear of a user that was not stored.
        # (The orders service shows the stronger way: a transactional outbox.)
        try:
            result = events.publish(
                "user.registered", {"user_id": user_id, "email": email, "name": name}
            )
        except PublishError as exc:
            return jsonify(error=str(exc), user_id=user_id), 503
        user = {"id": user_id, "email": email, "name": name}
        return jsonify(user=user, event=_published(result)), 201

    @app.get("/users")
    def list_users() -> ResponseReturnValue:
        with db.transaction(_database()) as connection:
            rows = connection.execute("SELECT * FROM users ORDER BY id").fetchall()
        return jsonify(users=[db.as_dict(row) for row in rows])

    @app.get("/users/<int:user_id>")
    def show_user(user_id: int) -> ResponseReturnValue:
        with db.transaction(_database()) as connection:
            row = connection.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
        if row is None:
            abort(404)
        return jsonify(user=db.as_dict(row))

    @app.delete("/users/<int:user_id>")
    def delete_user(user_id: int) -> ResponseReturnValue:
        with db.transaction(_database()) as connection:
            deleted = connection.execute("DELETE FROM users WHERE id = ?", (user_id,)).rowcount
        if not deleted:
            abort(404)
        result = events.publish("user.deleted", {"user_id": user_id})
        return jsonify(event=_published(result))

    @app.get("/health")
    def health() -> ResponseReturnValue:
        return jsonify(ok=True)

    return app
