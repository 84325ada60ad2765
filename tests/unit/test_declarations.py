"""Declaring events: schemas, versions and compatibility modes, and how the registry records
them (signed with the service's record)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pydantic
import pytest
from celery import Celery

from celery_events import (
    ConfigurationError,
    EventBus,
    EventNotDeclared,
    InvalidEnvelope,
    RegisteredDeclaration,
    SchemaError,
)
from celery_events.backends import memory
from celery_events.contracts import schema_from
from celery_events.declarations import dataschema_uri, version_in
from celery_events.trust import generate_ed25519

ORDER = {
    "type": "object",
    "properties": {"order_id": {"type": "integer"}, "total": {"type": "number"}},
    "required": ["order_id"],
}


class OrderCreated(pydantic.BaseModel):
    order_id: int
    total: float = 0.0


@pytest.fixture(autouse=True)
def _fresh_memory() -> Iterator[None]:
    memory.reset()
    yield
    memory.reset()


def make_bus(service: str = "shop", **settings: object) -> EventBus:
    return EventBus(Celery(service, broker="memory://", set_as_current=False), service=service, **settings)


def test_a_declaration_with_a_schema_is_version_1_and_names_it_in_its_events() -> None:
    bus = make_bus()
    declared = bus.declare("order.created", schema=ORDER)
    assert (declared.version, declared.compatibility) == (1, "BACKWARD")
    assert declared.dataschema == "urn:celery-events:schema:order.created:1"
    assert bus.new_event("order.created", {"order_id": 1}).dataschema == declared.dataschema
    assert version_in("order.created", declared.dataschema) == 1
    assert version_in("order.paid", declared.dataschema) is None


def test_two_versions_of_a_name_are_declared_side_by_side_and_the_highest_is_the_default() -> None:
    bus = make_bus()
    bus.declare("order.created", schema=ORDER, version=1)
    bus.declare("order.created", schema=OrderCreated, version=2)
    assert [(d.name, d.version) for d in bus.declarations] == [("order.created", 1), ("order.created", 2)]
    assert bus.new_event("order.created", {"order_id": 1}).dataschema == dataschema_uri("order.created", 2)
    assert bus.new_event("order.created", {"order_id": 1}, version=1).dataschema == dataschema_uri(
        "order.created", 1
    )
    with pytest.raises(EventNotDeclared, match="version 3 is not declared.*declares version 1, 2"):
        bus.new_event("order.created", {"order_id": 1}, version=3)


def test_declaring_the_same_version_again_differently_is_refused() -> None:
    bus = make_bus()
    bus.declare("order.created", schema=ORDER)
    bus.declare("order.created", schema=dict(ORDER))  # the same schema again: fine
    with pytest.raises(ConfigurationError, match="already declared"):
        bus.declare("order.created", schema={"type": "object"})
    with pytest.raises(ConfigurationError, match="both with and without a version"):
        bus.declare("order.created", sensitive=["email"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"schema": {"type": "nonsense"}}, "not a valid JSON Schema"),
        ({"schema": "not a schema"}, "must be a JSON Schema"),
        ({"schema": {"$schema": "http://json-schema.org/draft-07/schema#"}}, "draft 2020-12"),
        ({"schema": ORDER, "version": 0}, "whole number from 1"),
        ({"schema": ORDER, "version": True}, "whole number from 1"),
        ({"schema": ORDER, "compatibility": "SIDEWAYS"}, "is not a mode"),
        ({"dataschema": "urn:x:y"}, "names a version"),
        ({"schema": ORDER, "dataschema": "not a uri"}, "dataschema"),
    ],
)
def test_a_bad_declaration_says_what_is_wrong(options: dict[str, object], message: str) -> None:
    with pytest.raises((ConfigurationError, InvalidEnvelope), match=message):
        make_bus().declare("order.created", **options)  # type: ignore[arg-type]


def test_an_event_of_a_declared_name_cannot_carry_another_dataschema() -> None:
    bus = make_bus()
    bus.declare("order.created", schema=ORDER)
    with pytest.raises(InvalidEnvelope, match="declared with dataschema"):
        bus.new_event("order.created", {"order_id": 1}, dataschema="https://example.com/other")


def test_require_declarations_refuses_an_undeclared_name() -> None:
    bus = make_bus(require_declarations=True)
    with pytest.raises(EventNotDeclared, match="publishes only declared events"):
        bus.new_event("order.created", {"order_id": 1})
    bus.declare("order.created", schema=ORDER)
    assert bus.new_event("order.created", {"order_id": 1}).name == "order.created"


def test_a_schema_names_the_path_and_the_rule_its_data_breaks() -> None:
    schema = schema_from(
        {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "object",
         "properties": {"qty": {"type": "integer", "maximum": 10}}}}}},
        "here",
    )
    with pytest.raises(SchemaError, match=r"at items\[1\]\.qty; rule maximum") as caught:
        schema.validate({"items": [{"qty": 1}, {"qty": 11}]}, "order.created v1 data")
    assert (caught.value.path, caught.value.rule) == ("items[1].qty", "maximum")
    assert str(caught.value).startswith("order.created v1 data: 11 is greater than the maximum of 10")


def test_a_pydantic_model_is_read_as_its_json_schema_and_parses_data_into_itself() -> None:
    schema = schema_from(OrderCreated, "here")
    assert schema.model is OrderCreated
    assert schema.document["required"] == ["order_id"]
    assert schema.parse({"order_id": 3}) == OrderCreated(order_id=3)
    # The document judges the wire data, not pydantic's lax parsing
    assert not schema.is_valid({"order_id": "3"})
    with pytest.raises(SchemaError, match="rule int_parsing"):
        schema.parse({"order_id": "three"})


def test_the_registry_records_declarations_and_accepted_versions_with_subscriptions() -> None:
    bus = make_bus("orders")
    bus.subscribe("order.created", name="bill", versions=[2, 1], schema=OrderCreated)(lambda e: None)
    declared = RegisteredDeclaration(
        "orders", "order.created", 2, ORDER, "FULL", dataschema_uri("order.created", 2),
        history=({"type": "object"},),
    )
    bus.registry.register("orders", bus.subscriptions(), [declared])
    (read,) = bus.registry.declarations()
    assert read == declared and read.schema == ORDER and read.schemas == ({"type": "object"}, ORDER)
    assert read.registered_at > 0
    (subscription,) = bus.registry.subscriptions()
    assert subscription.versions == (1, 2)
    assert subscription.accepts == schema_from(OrderCreated, "x").document
    assert subscription.accepts_version(1) and not subscription.accepts_version(3)
    assert subscription.accepts_version(None)  # an unversioned event goes to every subscriber
    assert bus.registry.declared("order.created") == (declared,)
    assert bus.registry.declared("order.paid") == ()


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"name": "order.created", "version": 0}, "not a whole number"),
        ({"name": "bad name"}, "declaration 0"),
        ({"name": "order.created", "compatibility": "SIDEWAYS"}, "compatibility"),
        ({"name": "order.created", "schema": []}, "schema that is not an object"),
        ({"name": "order.created", "history": [1]}, "history"),
    ],
)
def test_a_record_with_a_bad_declaration_is_ignored_saying_why(entry: dict[str, object], reason: str) -> None:
    bus = make_bus("orders")
    bus.registry.store.write(
        "orders", json.dumps({"registered_at": 1.0, "subscriptions": [], "declarations": [entry]})
    )
    assert bus.registry.declarations() == []
    (ignored,) = bus.registry.ignored()
    assert reason in ignored.reason


def test_a_signed_record_covers_its_declarations(tmp_path: Path) -> None:
    private, public = generate_ed25519()
    (tmp_path / "orders.k1.key").write_bytes(private)
    (tmp_path / "orders.k1.pub").write_bytes(public)
    bus = make_bus("orders", signing_key=str(tmp_path / "orders.k1.key"), trusted_keys=str(tmp_path))
    declared = RegisteredDeclaration(
        "orders", "order.created", 1, ORDER, dataschema=dataschema_uri("order.created", 1)
    )
    bus.registry.register("orders", [], [declared])
    assert bus.registry.declarations() == [declared]
    # Changing a declared schema in the stored record breaks its signature
    _, records = bus.registry.store.load()
    record = json.loads(records[b"orders"])
    record["declarations"][0]["schema"] = {"type": "object"}
    bus.registry.store.write("orders", json.dumps(record))
    reader = make_bus("shop", trusted_keys=str(tmp_path))
    assert reader.registry.declarations() == []
    assert "signature is refused" in reader.registry.ignored()[0].reason
