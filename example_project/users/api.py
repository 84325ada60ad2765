"""The users service's asyncio signup API, on FastAPI: the same users and the same
``user.registered`` as the Flask app (``users/web.py``), published with ``await bus.apublish``.

``uvicorn users.api:app`` (from ``example_project/``) serves:

- ``POST /signups`` with ``{"email": ..., "name": ...}``: stores the user and publishes
  ``user.registered`` without blocking the event loop; answers 201 with the user, the event
  id and where it was delivered (orders and notifications subscribe);
- ``GET /health``.

It is the users service (its signing key, scopes and declarations): the subscribers cannot
tell its events from the Flask app's. The SQLite write is blocking, so it runs in a worker
thread; the publish is native asyncio on Redis. The demo turns trace records on, which write
to Redis as each event is sent, so here the bus runs its publish path around the send in a
worker thread too (see ``EventBus.apublish``).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from celery import Celery
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from observability_config import configure_tracing, observability_settings
from pydantic import BaseModel
from trust_config import trust_settings

from celery_events import EventBus, PublishError

from . import db
from .contracts import UserDeleted, UserRegistered

DATA_DIR = Path(os.environ.get("DEMO_DATA_DIR", Path(__file__).resolve().parent.parent / "var"))
DATABASE = DATA_DIR / "users.sqlite3"


class Signup(BaseModel):
    email: str
    name: str


def make_bus() -> EventBus:
    """The users service's bus, as the Flask app configures it (trust_config.py,
    observability_config.py), with the same declarations."""
    configure_tracing("users")
    broker = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    bus = EventBus(
        Celery("users", broker=broker),
        service="users",
        **trust_settings("users"),
        **observability_settings("users"),
    )
    bus.declare("user.registered", schema=UserRegistered, sensitive=["email", "name"])
    bus.declare("user.deleted", schema=UserDeleted)
    return bus


def store(email: str, name: str) -> int | None:
    """Insert the user; their id, or None when the e-mail address is taken."""
    try:
        with db.transaction(DATABASE) as connection:
            cursor = connection.execute(
                "INSERT INTO users (email, name) VALUES (?, ?)", (email, name)
            )
            return cursor.lastrowid
    except sqlite3.IntegrityError:
        return None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.bus = make_bus()
    yield
    # This loop's Redis connections, then the rest of the bus.
    await app.state.bus.aclose()


app = FastAPI(title="users signups", lifespan=lifespan)


@app.post("/signups", status_code=201)
async def signup(body: Signup) -> Any:
    if "@" not in body.email:
        return JSONResponse({"error": 'Send {"email": "ada@example.com", "name": "Ada"}.'}, 400)
    user_id = await asyncio.to_thread(store, body.email, body.name)
    if user_id is None:
        return JSONResponse({"error": f"A user with e-mail {body.email!r} already exists."}, 409)
    bus: EventBus = app.state.bus
    # Published after the commit, as the Flask app does: no event for a user not stored.
    try:
        result = await bus.apublish(
            "user.registered", {"user_id": user_id, "email": body.email, "name": body.name}
        )
    except PublishError as exc:
        return JSONResponse({"error": str(exc), "user_id": user_id}, 503)
    return {
        "user": {"id": user_id, "email": body.email, "name": body.name},
        "event": {
            "id": result.event.id,
            "name": result.event.name,
            "deliveries": [d.handler for d in result.deliveries],
        },
    }


@app.get("/health")
async def health() -> dict[str, bool]:
    return {"ok": True}
