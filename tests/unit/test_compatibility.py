"""Whether a new event schema keeps what the registered ones promised: pure functions, no broker.

Each rule is a table row (writer schema, reader schema, the kinds of change expected; none =
compatible), the modes are built on it, and a property test checks the promise itself: when
nothing breaks, every document valid under the writer's schema is valid under the reader's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any, Literal, Union

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from pydantic import BaseModel, Field, create_model

from celery_events.contracts import Change, breaking_changes, check_against, describe, reader_breaks

Schema = dict[str, Any]


def obj(properties: Schema, required: tuple[str, ...] = (), **more: Any) -> Schema:
    """An object schema, as most event schemas are."""
    return {"type": "object", "properties": properties, "required": list(required), **more}


def kinds(changes: list[Change]) -> list[str]:
    return [change.kind for change in changes]


# (id, writer, reader, the kinds of change the reader makes; [] = compatible)
RULES: list[tuple[str, Schema, Schema, list[str]]] = [
    # type
    ("integer read as number", {"type": "integer"}, {"type": "number"}, []),
    ("number read as integer", {"type": "number"}, {"type": "integer"}, ["type-narrowed"]),
    ("string read as integer", {"type": "string"}, {"type": "integer"}, ["type-changed"]),
    ("one of two types kept", {"type": "string"}, {"type": ["string", "null"]}, []),
    ("null dropped", {"type": ["string", "null"]}, {"type": "string"}, ["type-narrowed"]),
    ("any value read as a string", {}, {"type": "string"}, ["type-narrowed"]),
    ("a string read by anything", {"type": "string"}, {}, []),
    # boolean schemas
    ("true read as false", True, False, ["schema-false"]),
    ("false read as anything", False, {"type": "string"}, []),
    ("a string read by true", {"type": "string"}, True, []),
    # annotations never break
    (
        "titles, descriptions and defaults changed",
        {"type": "string", "title": "A", "description": "a", "default": "x", "examples": ["y"]},
        {"type": "string", "title": "B", "description": "b", "default": "z", "deprecated": True},
        [],
    ),
    # required
    ("required added", obj({"a": {"type": "string"}}), obj({"a": {"type": "string"}}, ("a",)), ["required-added"]),
    ("required dropped", obj({"a": {"type": "string"}}, ("a",)), obj({"a": {"type": "string"}}), []),
    # properties and additionalProperties
    ("optional property added to an open object", obj({}), obj({"a": {"type": "string"}}), []),
    ("property removed from an open object", obj({"a": {"type": "string"}}), obj({}), []),
    (
        "property removed from a closed object",
        obj({"a": {"type": "string"}}),
        obj({}, additionalProperties=False),
        ["property-removed-closed", "additional-properties-closed"],
    ),
    (
        "property added to a closed writer",
        obj({}, additionalProperties=False),
        obj({"a": {"type": "integer"}}, additionalProperties=False),
        [],
    ),
    (
        "open object closed",
        obj({"a": {"type": "string"}}),
        obj({"a": {"type": "string"}}, additionalProperties=False),
        ["additional-properties-closed"],
    ),
    (
        "closed object opened",
        obj({"a": {"type": "string"}}, additionalProperties=False),
        obj({"a": {"type": "string"}}),
        [],
    ),
    (
        "additional properties narrowed",
        obj({}, additionalProperties={"type": "number"}),
        obj({}, additionalProperties={"type": "integer"}),
        ["type-narrowed"],
    ),
    (
        "property declared by the reader checked against the writer's additional properties",
        obj({}, additionalProperties={"type": "string"}),
        obj({"a": {"type": "integer"}}),
        ["type-changed"],
    ),
    ("property type narrowed", obj({"a": {"type": "number"}}), obj({"a": {"type": "integer"}}), ["type-narrowed"]),
    ("min properties raised", {"type": "object"}, {"type": "object", "minProperties": 1}, ["min-properties-added"]),
    ("max properties lowered", {"type": "object", "maxProperties": 3}, {"type": "object", "maxProperties": 2}, ["max-properties-lowered"]),
    # enum and const
    ("enum value added", {"enum": ["a"]}, {"enum": ["a", "b"]}, []),
    ("enum value removed", {"enum": ["a", "b"]}, {"enum": ["a"]}, ["enum-narrowed"]),
    ("enum read by its type", {"enum": ["a", "b"]}, {"type": "string"}, []),
    ("enum added to a string", {"type": "string"}, {"type": "string", "enum": ["a"]}, ["enum-added"]),
    ("enum values out of a reader's bound", {"enum": [1, 5]}, {"type": "integer", "maximum": 3}, ["value-refused"]),
    ("const kept", {"const": "x"}, {"const": "x"}, []),
    ("const changed", {"const": "x"}, {"const": "y"}, ["const-changed"]),
    ("const added", {"type": "string"}, {"const": "x"}, ["const-added"]),
    ("const read by an enum", {"const": "x"}, {"enum": ["x", "y"]}, []),
    ("1 and 1.0 are one number", {"const": 1.0}, {"enum": [1]}, []),
    ("true is not 1", {"const": True}, {"enum": [1]}, ["enum-narrowed"]),
    # numbers
    ("maximum lowered", {"type": "number", "maximum": 10}, {"type": "number", "maximum": 5}, ["maximum-lowered"]),
    ("maximum raised", {"type": "number", "maximum": 5}, {"type": "number", "maximum": 10}, []),
    ("maximum added", {"type": "number"}, {"type": "number", "maximum": 10}, ["maximum-added"]),
    ("maximum made exclusive", {"type": "number", "maximum": 5}, {"type": "number", "exclusiveMaximum": 5}, ["maximum-lowered"]),
    ("exclusive maximum kept as maximum", {"type": "number", "exclusiveMaximum": 5}, {"type": "number", "maximum": 5}, []),
    ("minimum raised", {"type": "integer", "minimum": 0}, {"type": "integer", "minimum": 1}, ["minimum-raised"]),
    ("minimum lowered", {"type": "integer", "minimum": 1}, {"type": "integer", "minimum": 0}, []),
    ("integer bounds read as whole numbers", {"type": "integer", "exclusiveMinimum": 0}, {"type": "integer", "minimum": 1}, []),
    ("multiple of a multiple", {"type": "integer", "multipleOf": 4}, {"type": "integer", "multipleOf": 2}, []),
    ("multiple of added", {"type": "integer"}, {"type": "integer", "multipleOf": 2}, ["multiple-of-changed"]),
    ("integers are multiples of 0.5", {"type": "integer"}, {"type": "number", "multipleOf": 0.5}, []),
    # strings
    ("max length lowered", {"type": "string", "maxLength": 10}, {"type": "string", "maxLength": 5}, ["max-length-lowered"]),
    ("max length added", {"type": "string"}, {"type": "string", "maxLength": 5}, ["max-length-added"]),
    ("max length raised", {"type": "string", "maxLength": 5}, {"type": "string", "maxLength": 10}, []),
    ("min length raised", {"type": "string", "minLength": 1}, {"type": "string", "minLength": 2}, ["min-length-raised"]),
    ("pattern kept", {"type": "string", "pattern": "^a"}, {"type": "string", "pattern": "^a"}, []),
    ("pattern changed", {"type": "string", "pattern": "^a"}, {"type": "string", "pattern": "^b"}, ["pattern-changed"]),
    ("pattern added", {"type": "string"}, {"type": "string", "pattern": "^b"}, ["pattern-added"]),
    ("pattern removed", {"type": "string", "pattern": "^a"}, {"type": "string"}, []),
    ("format added", {"type": "string"}, {"type": "string", "format": "email"}, ["format-added"]),
    ("format changed", {"type": "string", "format": "date"}, {"type": "string", "format": "email"}, ["format-changed"]),
    ("format removed", {"type": "string", "format": "date"}, {"type": "string"}, []),
    # arrays
    ("item type narrowed", {"type": "array", "items": {"type": "number"}}, {"type": "array", "items": {"type": "integer"}}, ["type-narrowed"]),
    ("item type widened", {"type": "array", "items": {"type": "integer"}}, {"type": "array", "items": {"type": "number"}}, []),
    ("items given to any array", {"type": "array"}, {"type": "array", "items": {"type": "string"}}, ["type-narrowed"]),
    ("max items lowered", {"type": "array", "maxItems": 3}, {"type": "array", "maxItems": 2}, ["max-items-lowered"]),
    ("min items raised", {"type": "array"}, {"type": "array", "minItems": 1}, ["min-items-added"]),
    ("unique items added", {"type": "array"}, {"type": "array", "uniqueItems": True}, ["unique-items-added"]),
    ("unique items dropped", {"type": "array", "uniqueItems": True}, {"type": "array"}, []),
    (
        "tuple item narrowed",
        {"type": "array", "prefixItems": [{"type": "string"}, {"type": "number"}], "items": False},
        {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
        ["type-narrowed"],
    ),
    (
        "tuple closed by items false",
        {"type": "array", "prefixItems": [{"type": "string"}]},
        {"type": "array", "prefixItems": [{"type": "string"}], "items": False},
        ["schema-false"],
    ),
    (
        "a closed tuple is never longer",
        {"type": "array", "prefixItems": [{"type": "string"}], "items": False},
        {"type": "array", "maxItems": 1},
        [],
    ),
    # unions
    ("union widened", {"type": "string"}, {"anyOf": [{"type": "string"}, {"type": "integer"}]}, []),
    ("union branch dropped", {"anyOf": [{"type": "string"}, {"type": "integer"}]}, {"type": "string"}, ["type-narrowed"]),
    (
        "a required property the writer does not describe",
        obj({}, ("a",)),
        obj({"a": {"type": "string"}}),
        ["type-narrowed"],
    ),
    (
        "union branch uncovered",
        {"anyOf": [{"type": "string"}, {"type": "boolean"}]},
        {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        ["union-branch-uncovered"],
    ),
    ("nullable type read as anyOf with null", {"type": ["string", "null"]}, {"anyOf": [{"type": "string"}, {"type": "null"}]}, []),
    ("anyOf with null read as nullable type", {"anyOf": [{"type": "string"}, {"type": "null"}]}, {"type": ["string", "null"]}, []),
    (
        "oneOf of disjoint types",
        {"type": "integer"},
        {"oneOf": [{"type": "integer"}, {"type": "string"}]},
        [],
    ),
    (
        "oneOf whose branches overlap",
        {"type": "integer"},
        {"oneOf": [{"type": "integer"}, {"type": "number"}]},
        ["one-of-ambiguous"],
    ),
    (
        "allOf in the reader: each part holds",
        {"type": "integer", "minimum": 0, "maximum": 9},
        {"allOf": [{"type": "integer", "minimum": 0}, {"maximum": 5}]},
        ["maximum-lowered"],
    ),
    (
        "allOf in the writer: read together",
        {"allOf": [{"type": "integer"}, {"minimum": 0}]},
        {"type": "integer", "minimum": 0},
        [],
    ),
    ("not kept", {"type": "string", "not": {"const": "x"}}, {"type": "string", "not": {"const": "x"}}, []),
    ("not of another type", {"type": "string"}, {"not": {"type": "integer"}}, []),
    ("not added", {"type": "string"}, {"not": {"const": "x"}}, ["not-changed"]),
    # references
    (
        "references followed on both sides",
        {"$defs": {"A": {"type": "number"}}, "type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}},
        {"definitions": {"B": {"type": "integer"}}, "type": "object", "properties": {"a": {"$ref": "#/definitions/B"}}},
        ["type-narrowed"],
    ),
    (
        "a recursive schema against itself",
        {"$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}}}, "$ref": "#/$defs/N"},
        {"$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}}}, "$ref": "#/$defs/N"},
        [],
    ),
    # keywords not understood
    (
        "an unknown keyword kept",
        {"type": "object", "propertyNames": {"maxLength": 3}},
        {"type": "object", "propertyNames": {"maxLength": 3}},
        [],
    ),
    (
        "an unknown keyword changed",
        {"type": "object", "propertyNames": {"maxLength": 3}},
        {"type": "object", "propertyNames": {"maxLength": 2}},
        ["unknown-keyword-changed"],
    ),
    (
        "an unknown keyword that only refuses, dropped by the reader",
        {"type": "object", "propertyNames": {"maxLength": 3}, "dependentRequired": {"a": ["b"]}},
        {"type": "object"},
        [],
    ),
    (
        "an unknown keyword added by the reader",
        {"type": "object"},
        {"type": "object", "propertyNames": {"maxLength": 3}},
        ["unknown-keyword-changed"],
    ),
    (
        "an unknown keyword that exempts, dropped by the reader",
        {"type": "object", "patternProperties": {"^x": {"type": "integer"}}, "additionalProperties": False},
        {"type": "object", "additionalProperties": False},
        ["unknown-keyword-changed"],
    ),
    (
        "an external reference changed",
        {"$ref": "https://example.com/a.json"},
        {"$ref": "https://example.com/b.json"},
        ["unknown-keyword-changed"],
    ),
]


@pytest.mark.parametrize(("writer", "reader", "expected"), [row[1:] for row in RULES], ids=[row[0] for row in RULES])
def test_each_rule_names_the_break_or_finds_none(writer: Schema, reader: Schema, expected: list[str]) -> None:
    assert kinds(reader_breaks(writer, reader)) == expected


def test_a_change_names_the_nested_path_and_says_what_breaks() -> None:
    # Given an order whose line items' price was a number
    old = obj({"items": {"type": "array", "items": obj({"price": {"type": "number"}})}})
    new = obj({"items": {"type": "array", "items": obj({"price": {"type": "integer"}})}})
    # When the new schema reads old events
    [change] = breaking_changes(old, new, "BACKWARD")
    # Then the change is named where it is, in time order, with an event it refuses
    assert change.path == "items[].price"
    assert change.kind == "type-narrowed"
    assert change.description == (
        "items[].price was a number and is now an integer: subscribers on the new schema"
        " refuse an event with items[].price 9.5"
    )


# -- modes ------------------------------------------------------------------------------

V1 = obj({"order_id": {"type": "integer"}, "total": {"type": "number"}}, ("order_id",))
# customer_id added as required: new subscribers refuse old events without it.
WITH_REQUIRED = obj(
    {"order_id": {"type": "integer"}, "total": {"type": "number"}, "customer_id": {"type": "integer"}},
    ("order_id", "customer_id"),
)
# A required order_id dropped: old subscribers refuse new events without it.
WITHOUT_ORDER_ID = obj({"total": {"type": "number"}})


@pytest.mark.parametrize(
    ("old", "new", "mode", "expected"),
    [
        (V1, WITH_REQUIRED, "BACKWARD", ["required-added"]),
        (V1, WITH_REQUIRED, "FORWARD", []),
        (V1, WITH_REQUIRED, "FULL", ["required-added"]),
        (V1, WITH_REQUIRED, "NONE", []),
        (V1, WITHOUT_ORDER_ID, "BACKWARD", []),
        (V1, WITHOUT_ORDER_ID, "FORWARD", ["required-added"]),
        (V1, WITHOUT_ORDER_ID, "FULL", ["required-added"]),
        (V1, WITH_REQUIRED, "BACKWARD_TRANSITIVE", ["required-added"]),
    ],
)
def test_each_mode_reads_the_change_in_its_direction(
    old: Schema, new: Schema, mode: str, expected: list[str]
) -> None:
    assert kinds(breaking_changes(old, new, mode)) == expected


def test_forward_says_what_old_subscribers_refuse() -> None:
    [change] = breaking_changes(V1, WITHOUT_ORDER_ID, "FORWARD")
    assert change.path == "order_id"
    assert change.description == (
        "order_id was required and is now not a property: subscribers still on the old schema"
        " refuse events without order_id"
    )


def test_full_reports_both_directions() -> None:
    old = obj({"n": {"type": "integer", "maximum": 10}})
    new = obj({"n": {"type": "number", "maximum": 5}})
    changes = breaking_changes(old, new, "FULL")
    assert kinds(changes) == ["maximum-lowered", "type-narrowed"]
    assert "subscribers on the new schema refuse" in changes[0].description
    assert "subscribers still on the old schema refuse" in changes[1].description


def test_an_unknown_mode_is_a_value_error_naming_the_modes() -> None:
    with pytest.raises(ValueError, match="'SIDEWAYS' is not a compatibility mode; use one of BACKWARD"):
        breaking_changes(V1, V1, "SIDEWAYS")


# -- transitive modes ---------------------------------------------------------------------

# v2 drops note (open object), v3 brings it back as an integer: each step is compatible with
# the one before, and v3 is not compatible with v1.
NOTE_V1 = obj({"order_id": {"type": "integer"}, "note": {"type": "string"}}, ("order_id",))
NOTE_V2 = obj({"order_id": {"type": "integer"}}, ("order_id",))
NOTE_V3 = obj({"order_id": {"type": "integer"}, "note": {"type": "integer"}}, ("order_id",))


def test_backward_checks_the_last_schema_only_and_transitive_every_one() -> None:
    assert check_against([NOTE_V1], NOTE_V2, "BACKWARD") == []
    assert check_against([NOTE_V1, NOTE_V2], NOTE_V3, "BACKWARD") == []
    [change] = check_against([NOTE_V1, NOTE_V2], NOTE_V3, "BACKWARD_TRANSITIVE")
    assert (change.path, change.kind) == ("note", "type-changed")


def test_forward_transitive_and_full_transitive_check_every_schema() -> None:
    assert check_against([NOTE_V3, NOTE_V2], NOTE_V1, "FORWARD") == []
    assert kinds(check_against([NOTE_V3, NOTE_V2], NOTE_V1, "FORWARD_TRANSITIVE")) == ["type-changed"]
    assert kinds(check_against([NOTE_V1, NOTE_V2], NOTE_V3, "FULL_TRANSITIVE")) == ["type-changed", "type-changed"]


def test_a_change_found_against_two_schemas_is_listed_once() -> None:
    narrowed = obj({"order_id": {"type": "integer"}, "total": {"type": "integer"}}, ("order_id",))
    assert kinds(check_against([V1, V1], narrowed, "BACKWARD_TRANSITIVE")) == ["type-narrowed"]


def test_none_checks_nothing_and_an_empty_history_breaks_nothing() -> None:
    assert check_against([V1], {"type": "string"}, "NONE") == []
    assert check_against([], V1, "FULL_TRANSITIVE") == []


# -- pydantic models ----------------------------------------------------------------------


class Address(BaseModel):
    street: str
    city: str


class AddressV2(BaseModel):
    street: int
    city: str


class Status(str, Enum):
    NEW = "new"
    PAID = "paid"


class StatusV2(str, Enum):
    NEW = "new"
    PAID = "paid"
    VOID = "void"


class OrderV1(BaseModel):
    order_id: int
    total: int
    status: Status = Status.NEW
    address: Address | None = None
    tags: list[str] = []
    kind: Literal["web", "shop"] = "web"


def model_v2(**changes: Any) -> type[BaseModel]:
    """OrderV1 with fields added, replaced (``name=(type, default)``) or removed (``name=None``)."""
    fields: dict[str, Any] = {
        name: (field.annotation, field) for name, field in OrderV1.model_fields.items()
    }
    for name, spec in changes.items():
        if spec is None:
            del fields[name]
        else:
            fields[name] = spec
    return create_model("OrderV2", **fields)


PYDANTIC = [
    ("an optional field added", model_v2(note=(str, "")), "BACKWARD", []),
    ("an optional field added, forward", model_v2(note=(str, "")), "FORWARD", []),
    ("a required field added", model_v2(customer_id=(int, ...)), "BACKWARD", ["required-added"]),
    ("a required field added, forward", model_v2(customer_id=(int, ...)), "FORWARD", []),
    ("a required field removed", model_v2(order_id=None), "FORWARD", ["required-added"]),
    ("a required field removed, backward", model_v2(order_id=None), "BACKWARD", []),
    ("int widened to float", model_v2(total=(float, ...)), "BACKWARD", []),
    ("int widened to float, forward", model_v2(total=(float, ...)), "FORWARD", ["type-narrowed"]),
    ("Optional dropped", model_v2(address=(Address, Field(default_factory=lambda: Address(street="", city="")))), "BACKWARD", ["type-narrowed"]),
    ("a nested model's field changed", model_v2(address=(AddressV2 | None, None)), "BACKWARD", ["type-changed"]),
    ("an enum value added", model_v2(status=(StatusV2, StatusV2.NEW)), "BACKWARD", []),
    ("an enum value added, forward", model_v2(status=(StatusV2, StatusV2.NEW)), "FORWARD", ["enum-narrowed"]),
    ("a list's item type changed", model_v2(tags=(list[int], [])), "BACKWARD", ["type-changed"]),
    ("a Literal widened", model_v2(kind=(Literal["web", "shop", "app"], "web")), "BACKWARD", []),
    ("a Literal narrowed", model_v2(kind=(Literal["web"], "web")), "BACKWARD", ["enum-narrowed"]),
    ("the same model", OrderV1, "FULL", []),
]


@pytest.mark.parametrize(("new", "mode", "expected"), [row[1:] for row in PYDANTIC], ids=[row[0] for row in PYDANTIC])
def test_pydantic_model_versions(new: type[BaseModel], mode: str, expected: list[str]) -> None:
    assert kinds(breaking_changes(OrderV1.model_json_schema(), new.model_json_schema(), mode)) == expected


def test_a_nested_model_change_is_reported_at_its_path() -> None:
    new = model_v2(address=(AddressV2 | None, None))
    [change] = breaking_changes(OrderV1.model_json_schema(), new.model_json_schema(), "BACKWARD")
    assert change.path == "address.street"
    assert "was a string and is now an integer" in change.description


def test_a_removed_enum_value_is_named() -> None:
    [change] = breaking_changes(
        model_v2(status=(StatusV2, StatusV2.NEW)).model_json_schema(),
        OrderV1.model_json_schema(),
        "BACKWARD",
    )
    assert (change.path, change.kind) == ("status", "enum-narrowed")
    assert 'refuse an event with status "void"' in change.description


# -- describe -----------------------------------------------------------------------------


def test_describe_reads_like_a_diff() -> None:
    changes = breaking_changes(
        V1,
        obj(
            {"order_id": {"type": "integer"}, "total": {"type": "integer"}, "customer_id": {"type": "integer"}},
            ("order_id", "customer_id"),
        ),
        "BACKWARD",
    )
    assert describe(changes, "order.created", 1, "BACKWARD") == (
        "order.created v1: 2 breaking changes under BACKWARD\n"
        "  + customer_id: was not a property and is now required: subscribers on the new schema"
        " refuse events without customer_id [required-added]\n"
        "  - total: was a number and is now an integer: subscribers on the new schema refuse an"
        " event with total 9.5 [type-narrowed]"
    )
    assert describe([], "order.created", 2) == "order.created v2: no breaking changes"


def test_a_change_as_json_data() -> None:
    [change] = reader_breaks({"type": "number"}, {"type": "integer"})
    assert change.to_json() == {
        "path": "",
        "kind": "type-narrowed",
        "description": "the data is a number for the writer and an integer for the reader: the"
        " reader refuses an event with data 9.5",
    }


def test_the_module_examples_hold() -> None:
    import doctest

    from celery_events.contracts import compatibility

    assert doctest.testmod(compatibility).failed == 0


# -- soundness: nothing reported means every writer document is a reader document -----------

# hypothesis-jsonschema generates no documents of a recursive schema, nor of false.
NOT_GENERATED = {"a recursive schema against itself", "false read as anything"}
HAND_WRITTEN = [(row[1], row[2]) for row in RULES if not row[3] and row[0] not in NOT_GENERATED] + [
    (OrderV1.model_json_schema(), row[1].model_json_schema()) for row in PYDANTIC if not row[3] and row[2] != "FORWARD"
] + [
    (row[1].model_json_schema(), OrderV1.model_json_schema()) for row in PYDANTIC if not row[3] and row[2] == "FORWARD"
]

BASE: Schema = obj(
    {
        "id": {"type": "integer", "minimum": 1},
        "name": {"type": "string", "maxLength": 5},
        "price": {"type": "number", "maximum": 100},
        "status": {"enum": ["new", "paid"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "address": obj({"street": {"type": "string"}}, ("street",)),
    },
    ("id", "name"),
)


def mutation(change: Callable[[Schema], None]) -> Callable[[Schema], Schema]:
    def apply(schema: Schema) -> Schema:
        changed = copy.deepcopy(schema)
        change(changed)
        return changed

    return apply


def _set(path: str, value: Any) -> Callable[[Schema], None]:
    *parents, last = path.split("/")

    def change(schema: Schema) -> None:
        node = schema
        for part in parents:
            node = node[part]
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value

    return change


MUTATIONS = [
    mutation(_set(path, value))
    for path, value in [
        ("properties/name", None),
        ("properties/tags", None),
        ("properties/extra", {"type": "string"}),
        ("properties/id/minimum", 5),
        ("properties/id/minimum", 0),
        ("properties/id/type", "number"),
        ("properties/name/maxLength", 3),
        ("properties/name/maxLength", 8),
        ("properties/name/type", "integer"),
        ("properties/price/maximum", 50),
        ("properties/price/maximum", 200),
        ("properties/price/type", "integer"),
        ("properties/price/exclusiveMaximum", 100),
        ("properties/status/enum", ["new", "paid", "void"]),
        ("properties/status/enum", ["new"]),
        ("properties/tags/maxItems", 1),
        ("properties/tags/items/type", "integer"),
        ("properties/tags/uniqueItems", True),
        ("properties/address/properties/street/type", ["string", "null"]),
        ("properties/address/additionalProperties", False),
        ("additionalProperties", False),
        ("required", ["id"]),
        ("required", ["id", "name", "price"]),
    ]
] + [
    mutation(lambda s: s["properties"].update(price={"anyOf": [s["properties"]["price"], {"type": "null"}]})),
    mutation(lambda s: s["properties"].update(status={"type": "string"})),
]


def _variants() -> list[Schema]:
    singles = [change(BASE) for change in MUTATIONS]
    doubles = [MUTATIONS[j](MUTATIONS[i](BASE)) for i in range(0, len(MUTATIONS), 3) for j in range(1, len(MUTATIONS), 4)]
    return [BASE, *singles, *doubles]


VARIANTS = _variants()
COMPATIBLE_VARIANTS = [
    (writer, reader) for writer in VARIANTS for reader in VARIANTS if not reader_breaks(writer, reader)
]


def test_the_variants_give_compatible_and_incompatible_pairs() -> None:
    # Not vacuous: many pairs are compatible (checked below) and many are not.
    pairs = len(VARIANTS) ** 2
    assert 200 < len(COMPATIBLE_VARIANTS) < pairs - 200


def documents_of(pairs: list[tuple[Schema, Schema]]) -> st.SearchStrategy[tuple[Schema, Any]]:
    return st.sampled_from(pairs).flatmap(lambda pair: st.tuples(st.just(pair[1]), from_schema(pair[0])))


SOUND = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


@SOUND
@given(documents_of(HAND_WRITTEN))
def test_hand_written_compatible_pairs_are_sound(case: tuple[Schema, Any]) -> None:
    reader, document = case
    assert jsonschema.Draft202012Validator(reader).is_valid(document)


@SOUND
@given(documents_of(COMPATIBLE_VARIANTS))
def test_compatible_mutations_are_sound(case: tuple[Schema, Any]) -> None:
    reader, document = case
    assert jsonschema.Draft202012Validator(reader).is_valid(document)


# -- soundness on generated schemas: a random schema and a random tweak of one of its nodes ---

NAMES = ("a", "b")
SMALL = st.sampled_from([0, 1, 3])


def _leaf() -> st.SearchStrategy[Any]:
    number = st.fixed_dictionaries(
        {"type": st.sampled_from(["integer", "number"])},
        optional={"minimum": SMALL, "maximum": st.sampled_from([3, 5]), "exclusiveMinimum": SMALL, "multipleOf": st.sampled_from([1, 2, 0.5])},
    )
    string = st.fixed_dictionaries(
        {"type": st.just("string")},
        optional={"minLength": SMALL, "maxLength": st.sampled_from([3, 5]), "pattern": st.sampled_from(["^a", "b$"])},
    )
    values = st.sampled_from([0, 1, 2.5, "a", "b", None, True])
    return st.one_of(
        number,
        string,
        st.fixed_dictionaries({"enum": st.lists(values, min_size=1, max_size=3, unique_by=repr)}),
        st.fixed_dictionaries({"const": values}),
        st.fixed_dictionaries({"type": st.lists(st.sampled_from(["null", "boolean", "integer", "string"]), min_size=1, max_size=2, unique=True)}),
        st.just({}),
    )


def _composite(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("object"), "properties": st.dictionaries(st.sampled_from(NAMES), children, max_size=2)},
            optional={
                "required": st.lists(st.sampled_from(NAMES), unique=True, max_size=2),
                "additionalProperties": st.one_of(st.just(False), children),
                "maxProperties": st.just(1),
                "propertyNames": st.just({"maxLength": 1}),
                "dependentRequired": st.just({"a": ["b"]}),
            },
        ),
        st.fixed_dictionaries(
            {"type": st.just("array")},
            optional={
                "items": st.one_of(st.just(False), children),
                "prefixItems": st.lists(children, min_size=1, max_size=2),
                "minItems": st.just(1),
                "maxItems": st.sampled_from([1, 2]),
                "uniqueItems": st.just(True),
            },
        ),
        st.fixed_dictionaries({"anyOf": st.lists(children, min_size=1, max_size=3)}),
        st.fixed_dictionaries({"oneOf": st.lists(children, min_size=1, max_size=2)}),
        st.fixed_dictionaries({"allOf": st.lists(children, min_size=1, max_size=2)}),
        st.fixed_dictionaries({"not": children}),
    )


GENERATED = st.recursive(_leaf(), _composite, max_leaves=5)


def _nodes(schema: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The paths of every sub-schema of ``schema``."""
    found = [path]
    if isinstance(schema, dict):
        for key in ("additionalProperties", "items", "not"):
            if isinstance(schema.get(key), dict):
                found += _nodes(schema[key], (*path, key))
        for key in ("properties",):
            for name, sub in schema.get(key, {}).items():
                found += _nodes(sub, (*path, key, name))
        for key in ("prefixItems", "anyOf", "oneOf", "allOf"):
            for i, sub in enumerate(schema.get(key, [])):
                found += _nodes(sub, (*path, key, i))
    return found


TWEAKS: list[Callable[[dict[str, Any]], Any]] = [
    lambda node: {},
    lambda node: {"anyOf": [node, {"type": "null"}]},
    lambda node: {k: v for k, v in list(node.items())[1:]},
    lambda node: {k: v for k, v in list(node.items())[:-1]},
    lambda node: {**node, "additionalProperties": False} if node.get("type") == "object" else node,
    lambda node: {**node, "required": list(NAMES)} if node.get("type") == "object" else node,
    lambda node: {**node, "enum": [*node["enum"], "c"]} if "enum" in node else {**node, "maximum": 1},
    lambda node: {**node, "type": "number"} if node.get("type") == "integer" else {**node, "minLength": 1},
]


@st.composite
def tweaked_pairs(draw: st.DrawFn) -> tuple[Any, Any]:
    """A generated schema and the same with one node tweaked, in either order."""
    schema = draw(GENERATED)
    path = draw(st.sampled_from(_nodes(schema)))
    tweaked = copy.deepcopy(schema)
    parent: Any = None
    node: Any = tweaked
    for part in path:
        parent, node = node, node[part]
    if isinstance(node, dict):
        changed = draw(st.sampled_from(TWEAKS))(node)
        if parent is None:
            tweaked = changed
        else:
            parent[path[-1]] = changed
    if draw(st.booleans()):
        tweaked = _hoisted(tweaked, draw(st.sampled_from(_nodes(tweaked))))
    return (schema, tweaked) if draw(st.booleans()) else (tweaked, schema)


def _hoisted(schema: Any, path: tuple[Any, ...]) -> Any:
    """``schema`` with the node at ``path`` moved to ``$defs`` and referenced: the same
    documents, read through a reference."""
    if not path or not isinstance(schema, dict):
        return schema
    hoisted = copy.deepcopy(schema)
    parent: Any = hoisted
    for part in path[:-1]:
        parent = parent[part]
    hoisted.setdefault("$defs", {})["moved"] = parent[path[-1]]
    parent[path[-1]] = {"$ref": "#/$defs/moved", "description": "moved"}
    return hoisted


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(tweaked_pairs(), st.data())
def test_generated_compatible_pairs_are_sound(pair: tuple[Any, Any], data: st.DataObject) -> None:
    writer, reader = pair
    if reader_breaks(writer, reader):
        return
    try:
        documents = from_schema(writer)
        document = data.draw(documents)
    except Exception as exc:
        # A writer with no documents (false, an empty enum), or one hypothesis-jsonschema
        # cannot read (some references): nothing to check.
        if any(word in type(exc).__name__ for word in ("Unsatisfiable", "Invalid", "Referencing", "RefResolution")):
            return
        raise
    # hypothesis-jsonschema reads draft 7: it knows no prefixItems, and may miss the writer.
    if not jsonschema.Draft202012Validator(writer).is_valid(document):
        return
    assert jsonschema.Draft202012Validator(reader).is_valid(document), (writer, reader, document)


# -- pydantic discriminated unions ----------------------------------------------------------


class Cat(BaseModel):
    pet_type: Literal["cat"]
    meows: int


class Dog(BaseModel):
    pet_type: Literal["dog"]
    barks: float = Field(gt=0, le=100)


class Lizard(BaseModel):
    pet_type: Literal["lizard"]


class CatV2(BaseModel):
    pet_type: Literal["cat"]
    meows: str


def owner(*pets: type[BaseModel]) -> Schema:
    pet = Annotated[Union[pets], Field(discriminator="pet_type")]  # noqa: UP007 - a runtime union
    return create_model("Owner", pet=(pet, ...)).model_json_schema()


def test_a_discriminated_union_gaining_a_branch_is_backward_compatible_only() -> None:
    old, new = owner(Cat, Dog), owner(Cat, Dog, Lizard)
    assert breaking_changes(old, new, "BACKWARD") == []
    [change] = breaking_changes(old, new, "FORWARD")
    assert (change.path, change.kind) == ("pet", "union-branch-uncovered")
    assert change.description == (
        "pet may be an object (Lizard) in the new schema, which no branch of the union in the"
        " old schema takes: subscribers still on the old schema refuse such an event"
    )


def test_a_change_inside_one_branch_of_a_discriminated_union_is_named_there() -> None:
    [change] = breaking_changes(owner(Cat, Dog), owner(CatV2, Dog), "BACKWARD")
    assert (change.path, change.kind) == ("pet.meows", "type-changed")


def test_booleans_read_against_an_enum_of_both_values() -> None:
    assert reader_breaks({"type": "boolean"}, {"enum": [True, False]}) == []
    assert kinds(reader_breaks({"type": ["boolean", "null"]}, {"enum": [True, False]})) == ["enum-narrowed"]


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(GENERATED, st.data())
def test_a_schema_breaks_nothing_of_itself_nor_of_itself_read_through_a_reference(
    schema: Any, data: st.DataObject
) -> None:
    moved = _hoisted(schema, data.draw(st.sampled_from(_nodes(schema))))
    assert reader_breaks(schema, schema) == []
    assert reader_breaks(schema, moved) == []
    assert reader_breaks(moved, schema) == []
