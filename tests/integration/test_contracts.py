"""Event contracts end to end: a real Redis, a real `celery worker` of ``fulfilment``.

The publisher ``shop`` declares ``order.created`` v1 and v2 and records its declarations in
the registry; ``fulfilment`` (tests/services/contracted.py) has ``ship`` accepting v1 only,
``audit`` accepting every version, and ``welcome`` taking a pydantic model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celery_events import Event, EventBus
from celery_events.trust.keys import generate_ed25519

from ..harness import wait_until
from .conftest import effects

FULFILMENT = "tests.services.contracted"

ORDER_V1 = {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}
ORDER_V2 = {
    "type": "object",
    "required": ["order_id", "items"],
    "properties": {
        "order_id": {"type": "integer"},
        "items": {
            "type": "array",
            "items": {"type": "object", "properties": {"qty": {"type": "integer"}}},
        },
    },
}
V2 = "urn:celery-events:schema:order.created:2"


@pytest.fixture
def buses(redis_url: str) -> Iterator[Callable[..., EventBus]]:
    made: list[EventBus] = []

    def make(service: str, **settings: Any) -> EventBus:
        app = Celery(f"{service}-{len(made)}", broker=redis_url)
        bus = EventBus(app, service=service, **settings)
        made.append(bus)
        return bus

    yield make
    for bus in made:
        bus.close()


def shop_of(buses: Callable[..., EventBus], **settings: Any) -> EventBus:
    """The shop, with both versions declared and recorded in the registry (what its worker or
    `celery eventbus register` does)."""
    shop = buses("shop", **settings)
    shop.declare("order.created", schema=ORDER_V1, version=1)
    shop.declare("order.created", schema=ORDER_V2, version=2)
    shop.register()
    return shop


def handled(client: redis.Redis, count: int) -> list[tuple[str, str]]:
    def found() -> list[tuple[str, str]]:
        seen = [(str(e["handler"]), str(e["event_id"])) for e in effects(client)]
        return seen if len(seen) >= count else []

    return sorted(wait_until(found, timeout=20, what=f"{count} handler effect(s)"))


def test_during_a_migration_each_subscriber_gets_the_versions_it_accepts(
    start_worker: Callable[..., Any], buses: Callable[..., EventBus], redis_client: redis.Redis
) -> None:
    # Given fulfilment's worker running, and the shop publishing both versions
    start_worker(FULFILMENT)
    shop = shop_of(buses)

    # When it publishes v1 and v2 of order.created
    v1 = shop.publish("order.created", {"id": 1}, version=1)
    v2 = shop.publish("order.created", {"order_id": 2, "items": [{"qty": 1}]})

    # Then ship (v1 only) gets v1, audit (every version) gets both, each as declared
    assert [d.handler for d in v1.deliveries] == ["fulfilment.ship", "fulfilment.audit"]
    assert [d.handler for d in v2.deliveries] == ["fulfilment.audit"]
    assert handled(redis_client, 3) == sorted([
        ("fulfilment.ship", v1.event.id),
        ("fulfilment.audit", v1.event.id),
        ("fulfilment.audit", v2.event.id),
    ])
    by_event = {e["event_id"]: e for e in effects(redis_client)}
    assert by_event[v2.event.id]["data"] == {"order_id": 2, "items": [{"qty": 1}]}


def test_data_breaking_the_registered_schema_is_dead_lettered_and_never_handled(
    start_worker: Callable[..., Any], buses: Callable[..., EventBus], redis_client: redis.Redis
) -> None:
    # Given fulfilment running and the shop's declarations in the registry
    start_worker(FULFILMENT)
    shop_of(buses)
    # When another process of the shop, which declares nothing (so validates nothing), sends
    # v2 events: one breaking the declared schema, one keeping it
    careless = buses("shop")
    broken = careless.publish_event(Event.create(
        "order.created", {"order_id": 3, "items": [{"qty": "three"}]}, source="shop",
        dataschema=V2,
    ))
    good = careless.publish_event(Event.create(
        "order.created", {"order_id": 4, "items": []}, source="shop", dataschema=V2,
    ))
    assert [d.handler for d in broken.deliveries] == ["fulfilment.audit"]

    # Then the breaking one is dead-lettered schema_mismatch, unrun; the other is handled
    view = buses("fulfilment")
    [letter] = wait_until(
        lambda: view.dead_letters.list(reason="schema_mismatch"), timeout=20,
        what="a schema_mismatch dead letter",
    )
    assert (letter.event_id, letter.handler, letter.attempts) == (
        broken.event.id, "fulfilment.audit", 1,
    )
    assert "items[0].qty" in letter.error_message and "as shop declares it" in (
        letter.error_message
    )
    assert handled(redis_client, 1) == [("fulfilment.audit", good.event.id)]
    assert broken.event.id not in {e["event_id"] for e in effects(redis_client)}


def test_a_pydantic_handler_gets_the_model_and_refused_data_is_a_schema_mismatch(
    start_worker: Callable[..., Any], buses: Callable[..., EventBus], redis_client: redis.Redis
) -> None:
    start_worker(FULFILMENT)
    members = buses("members")
    good = members.publish("user.registered", {"user_id": 7, "email": "a@example.com"})
    bad = members.publish("user.registered", {"user_id": "seven", "email": "b@example.com"})

    assert handled(redis_client, 1) == [("fulfilment.welcome", good.event.id)]
    [effect] = effects(redis_client)
    assert effect["data"] == {"model": "UserRegistered", "user_id": 7, "email": "a@example.com"}
    view = buses("fulfilment")
    [letter] = wait_until(
        lambda: view.dead_letters.list(reason="schema_mismatch"), timeout=20,
        what="a schema_mismatch dead letter",
    )
    assert letter.event_id == bad.event.id and "user_id" in letter.error_message


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    for service in ("shop", "fulfilment"):
        private, public = generate_ed25519()
        (tmp_path / f"{service}.k1.key").write_bytes(private)
        (trusted / f"{service}.k1.pub").write_bytes(public)
    return tmp_path


def test_signed_events_with_a_dataschema_verify_and_are_validated(
    start_worker: Callable[..., Any], buses: Callable[..., EventBus], redis_client: redis.Redis,
    keys: Path,
) -> None:
    # Given fulfilment checking signatures, and a shop that signs
    start_worker(FULFILMENT, env={
        "CONTRACTED_TRUSTED": str(keys / "trusted"),
        "CONTRACTED_KEY": str(keys / "fulfilment.k1.key"),
    })
    shop = shop_of(buses, signing_key=str(keys / "shop.k1.key"))

    # When it publishes a signed v2 event (its dataschema signed with the rest)
    sent = shop.publish("order.created", {"order_id": 5, "items": []})
    assert sent.event.dataschema == V2

    # Then the signature verifies and the handler runs; nothing is dead-lettered
    assert handled(redis_client, 1) == [("fulfilment.audit", sent.event.id)]
    assert buses("fulfilment", trusted_keys=str(keys / "trusted")).dead_letters.count() == 0
