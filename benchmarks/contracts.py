"""Declared events: what a schema costs a publish.

Three buses publish the same ten-field event to ten subscribing services (ten queues, not
consumed), taking turns in short chunks within each repeat (as benchmarks/publish.py does): one
with the name undeclared, one that declares it with a ten-field JSON Schema, one that declares
it with the same fields as a pydantic model. Whatever the bus does for a declared name at
publish (the ``dataschema`` attribute, the version's subscriptions, validation against the
compiled schema) is in the difference. Target: declared ÷ undeclared ≤ 1.15× for the JSON
Schema (the pydantic model's document is validated the same way; reported, no target).
"""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery
from pydantic import BaseModel, Field

from celery_events import EventBus

from ._stats import Section, Series, Target, ratios
from .publish import publish_to_ten

NAME = "bench.contracts"
DATA: dict[str, Any] = {
    "order_id": 7,
    "user_id": 42,
    "email": "someone@example.com",
    "plan": "pro",
    "total": 19.5,
    "currency": "EUR",
    "items": 3,
    "paid": True,
    "coupon": None,
    "note": "leave at the door",
}
SCHEMA = {
    "type": "object",
    "properties": {
        "order_id": {"type": "integer", "minimum": 1},
        "user_id": {"type": "integer", "minimum": 1},
        "email": {"type": "string", "maxLength": 320},
        "plan": {"enum": ["free", "pro", "team"]},
        "total": {"type": "number", "minimum": 0},
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "items": {"type": "integer", "minimum": 0},
        "paid": {"type": "boolean"},
        "coupon": {"type": ["string", "null"]},
        "note": {"type": "string"},
    },
    "required": ["order_id", "user_id", "email", "plan", "total", "currency", "items", "paid"],
    "additionalProperties": False,
}


class Order(BaseModel):
    """The same ten fields as :data:`SCHEMA`, as a pydantic model."""

    order_id: int = Field(ge=1)
    user_id: int = Field(ge=1)
    email: str = Field(max_length=320)
    plan: str
    total: float = Field(ge=0)
    currency: str = Field(pattern="^[A-Z]{3}$")
    items: int = Field(ge=0)
    paid: bool
    coupon: str | None = None
    note: str = ""


def publish(url: str, client: redis.Redis, smoke: bool) -> list[Section]:
    buses = {}
    for label, name, schema in (
        ("publish to 10, undeclared", "undeclared", None),
        ("publish to 10, declared with a 10-field JSON Schema", "schema", SCHEMA),
        ("publish to 10, declared with a 10-field pydantic model", "model", Order),
    ):
        app = Celery(f"bench-contracts-{name}", broker=url)
        app.conf.task_send_sent_event = False
        bus = buses[label] = EventBus(app, service=f"contracts-{name}")
        if schema is not None:
            bus.declare(NAME, schema=schema)
    results = publish_to_ten(client, buses, NAME, DATA, "c", smoke)
    names = list(buses)
    plain, declared, modelled = (results[name] for name in names)
    section = Section(
        title="Publish to 10 subscribers, declared with a schema and undeclared",
        setup=(
            "Time per published event, queues not consumed, task-sent events off; the same"
            " ten-field data, its name undeclared or declared (`bus.declare`) with a JSON Schema"
            " or a pydantic model of those fields."
        ),
        figures=[Series(name, "µs", results[name]) for name in names]
        + [
            Series(
                "schema cost per event", "µs",
                [d - p for d, p in zip(declared, plain, strict=True)],
            ),
            Series("pydantic-declared ÷ undeclared", "×", ratios(modelled, plain)),
        ],
    )
    ratio = Series("JSON-Schema-declared publish to 10 ÷ undeclared", "×", ratios(declared, plain))
    section.targets = [Target("14. " + ratio.name, ratio, "≤ 1.15×", ratio.median <= 1.15)]
    return [section]
