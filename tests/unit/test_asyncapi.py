"""The AsyncAPI document of a fleet: valid against the official 3.0.0 schema, self-contained,
and saying who publishes and receives which version of which event."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from celery_events import Event, Subscription
from celery_events.contracts.schemas import fingerprint_of, schema_from
from celery_events.declarations import dataschema_uri
from celery_events.errors import ConfigurationError
from celery_events.registry import RegisteredDeclaration
from celery_events.spec import Broker, asyncapi_document, channel_key, to_json, to_yaml

from ..asyncapi_schema import asyncapi_errors, payload_validator


class Address(BaseModel):
    street: str
    city: str


class UserRegisteredV2(BaseModel):
    user_id: int
    email: str
    address: Address
    previous: list[Address] = []


class Contact(BaseModel):
    user_id: int
    address: Address | None = None


V1 = {
    "type": "object",
    "properties": {"user_id": {"type": "integer"}},
    "required": ["user_id"],
}
V2 = schema_from(UserRegisteredV2, "test").document
ORDER = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://shop.example/schemas/order-created",
    "type": "object",
    "$defs": {"line": {"type": "object", "properties": {"sku": {"type": "string"}},
                       "required": ["sku"]}},
    "properties": {
        "order_id": {"type": "integer"},
        "lines": {"type": "array", "items": {"$ref": "#/$defs/line"}},
        # a property named like a keyword, and data that looks like a reference
        "const": {"type": "string", "default": {"$ref": "#/not/a/schema"}},
    },
    "required": ["order_id"],
}
REDIS = Broker("redis", "redis://:s3cret@cache.internal:6380/2")
AMQP = Broker("amqp", "amqp://shop:s3cret@rabbit.internal:5672/shop", exchange="celery_events")
SENTINEL = Broker("sentinel", "sentinel://:s3cret@s1:26379;sentinel://:s3cret@s2:26379")


def declared(
    service: str, name: str, version: int | None, schema: dict[str, Any] | None, **extra: Any
) -> RegisteredDeclaration:
    return RegisteredDeclaration(
        service, name, version, schema,
        dataschema=None if version is None else dataschema_uri(name, version),
        registered_at=1_780_000_000.0, **extra,
    )


DECLARATIONS = [
    declared("users", "user.registered", 1, V1),
    declared("users", "user.registered", 2, V2, sensitive=("email",)),
    declared("orders", "order.created", 1, ORDER, compatibility="FULL"),
    declared("billing", "invoice.sent", None, None),
]


def subscriptions(queue_arguments: tuple[tuple[str, Any], ...] = ()) -> list[Subscription]:
    def sub(pattern: str, handler: str, versions: tuple[int, ...] = ()) -> Subscription:
        service = handler.partition(".")[0]
        return Subscription(
            pattern, service, handler, f"events.{service}", registered_at=1_780_000_500.0,
            queue_arguments=queue_arguments, versions=versions,
        )

    return [
        sub("user.registered", "orders.welcome_order", versions=(2,)),
        sub("user.*", "orders.audit_users"),
        sub("order.#", "mailer.order_mail"),
        sub("shipment.#", "mailer.shipment_mail"),
        sub("refund.requested", "billing.refund"),
        sub("invoice.*.failed", "billing.dunning"),
        sub("user.registered", "legacy.import_user", versions=(1,)),
        Subscription(
            "user.registered", "crm", "crm.sync_contact", "events.crm",
            queue_arguments=queue_arguments, accepts=schema_from(Contact, "test").document,
        ),
    ]


PUBLISHED = [("users", "user.registered"), ("admin", "user.registered"), ("shop", "payment.failed")]


def fleet(backend: Broker = REDIS, **options: Any) -> dict[str, Any]:
    return asyncapi_document(
        DECLARATIONS, subscriptions(), backend=backend, published=PUBLISHED, **options
    )


def envelope(name: str, data: dict[str, Any], version: int | None = None, **extra: Any) -> Any:
    dataschema = None if version is None else dataschema_uri(name, version)
    event = Event.create(name, data, source="users", dataschema=dataschema, **extra)
    return event.to_envelope()


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(fleet(REDIS), id="redis"),
        pytest.param(fleet(SENTINEL), id="sentinel"),
        pytest.param(
            asyncapi_document(
                DECLARATIONS, subscriptions((("x-queue-type", "quorum"), ("x-delivery-limit", 7))),
                backend=AMQP, published=PUBLISHED,
            ),
            id="amqp",
        ),
        pytest.param(asyncapi_document([], [], backend=REDIS), id="empty"),
        pytest.param(
            asyncapi_document([], [subscriptions()[3]], backend=Broker("memory", "memory://")),
            id="one-pattern-on-memory",
        ),
    ],
)
def test_the_document_is_valid_asyncapi_3_and_self_contained(
    document: dict[str, Any], asyncapi_schema: dict[str, Any]
) -> None:
    assert document["asyncapi"] == "3.0.0"
    assert asyncapi_errors(document, asyncapi_schema) == []


def test_a_broken_document_is_caught_by_the_same_check(asyncapi_schema: dict[str, Any]) -> None:
    # The check itself: a reference to nowhere and a bad action are both reported
    document = fleet()
    document["operations"]["users.send.user.registered"]["action"] = "publish"
    document["channels"]["user.registered"]["messages"]["ghost"] = {
        "$ref": "#/components/messages/ghost"
    }
    errors = asyncapi_errors(document, asyncapi_schema)
    assert any(e.startswith("operations/users.send.user.registered") for e in errors)
    assert "#/components/messages/ghost: points nowhere" in errors


def test_one_channel_per_known_name_and_per_pattern_that_matches_none() -> None:
    channels = fleet()["channels"]
    assert sorted(channels) == [
        "invoice._word_.failed", "invoice.sent", "order.created", "payment.failed",
        "refund.requested", "shipment._words_", "user.registered",
    ]
    assert channels["shipment._words_"]["address"] == "shipment.#"
    assert channels["invoice._word_.failed"]["address"] == "invoice.*.failed"
    assert "`*` stands for exactly one word and `#` for zero or more" in (
        channels["shipment._words_"]["description"]
    )
    # an exact name that someone waits for but nobody publishes is a name, not a pattern
    assert channels["refund.requested"]["description"] == (
        "Subscribed, but no service declared or published this name yet."
    )
    # a pattern that matches a known name adds no channel of its own (user.* -> user.registered)
    assert "user._word_" not in channels
    assert channel_key("a.*.#") == "a._word_._words_"


def test_each_declared_version_is_a_message_whose_payload_is_the_cloudevents_envelope() -> None:
    document = fleet()
    channel = document["channels"]["user.registered"]
    # admin publishes user.registered without declaring it: its events have no version
    assert sorted(channel["messages"]) == [
        "user.registered.unversioned", "user.registered.v1", "user.registered.v2",
    ]
    v2 = document["components"]["messages"]["user.registered.v2"]
    assert v2["contentType"] == "application/cloudevents+json"
    assert (v2["x-version"], v2["x-publishers"], v2["x-sensitive"]) == (2, ["users"], ["email"])
    assert v2["x-fingerprint"] == fingerprint_of(V2)
    properties = v2["payload"]["properties"]
    assert properties["type"]["const"] == "user.registered"
    assert properties["specversion"] == {"const": "1.0"}
    assert properties["dataschema"] == {"const": "urn:celery-events:schema:user.registered:2"}
    assert properties["data"] == {"$ref": "#/components/schemas/user.registered.v2"}
    assert {"id", "source", "type", "time", "specversion", "data", "dataschema"} <= set(
        v2["payload"]["required"]
    )


def test_real_envelopes_validate_against_their_message_and_only_that_one() -> None:
    # Given the document, and envelopes the bus would write
    document = fleet()
    v2 = payload_validator(document, "user.registered.v2")
    v1 = payload_validator(document, "user.registered.v1")
    plain = payload_validator(document, "user.registered.unversioned")
    good = envelope(
        "user.registered",
        {"user_id": 7, "email": "a@example.com", "address": {"street": "1 Main", "city": "Oslo"}},
        version=2, extensions={"traceparent": "00-abc-def-01"},
    )

    # Then a v2 event (with an extension attribute) is a v2 message, pydantic's $defs resolved
    assert list(v2.iter_errors(good)) == []
    assert not v1.is_valid(good) and not plain.is_valid(good)
    # and data breaking the nested model is refused, as is the wrong version's dataschema
    bad_city = envelope(
        "user.registered",
        {"user_id": 7, "email": "a@example.com", "address": {"street": "1 Main"}},
        version=2,
    )
    assert not v2.is_valid(bad_city)
    assert v1.is_valid(envelope("user.registered", {"user_id": 7}, version=1))
    # and an event without a version is the unversioned message, with any object as data
    assert plain.is_valid(envelope("user.registered", {"anything": True}))


def test_declared_schemas_are_components_with_their_references_rewritten() -> None:
    document = fleet()
    order = document["components"]["schemas"]["order.created.v1"]
    assert "$schema" not in order and "$id" not in order
    assert order["properties"]["lines"]["items"] == {
        "$ref": "#/components/schemas/order.created.v1/$defs/line"
    }
    # data is left alone, and so is a property that has a keyword's name
    assert order["properties"]["const"]["default"] == {"$ref": "#/not/a/schema"}
    user = document["components"]["schemas"]["user.registered.v2"]
    assert user["properties"]["address"] == {"$ref": "#/components/schemas/user.registered.v2/$defs/Address"}
    validator = payload_validator(document, "order.created.v1")
    assert validator.is_valid(
        envelope("order.created", {"order_id": 1, "lines": [{"sku": "a"}]}, version=1)
    )
    assert not validator.is_valid(
        envelope("order.created", {"order_id": 1, "lines": [{"qty": 1}]}, version=1)
    )


def test_undeclared_names_carry_any_object_as_data() -> None:
    messages = fleet()["components"]["messages"]
    for key in ("payment.failed.unversioned", "invoice.sent.unversioned",
                "shipment._words_.unversioned"):
        assert messages[key]["payload"]["properties"]["data"] == {"type": "object"}
    # a pattern's events have no single name
    assert "const" not in messages["shipment._words_.unversioned"]["payload"]["properties"]["type"]


def test_a_send_operation_per_publishing_service_and_name() -> None:
    operations = fleet()["operations"]
    sends = {key: op for key, op in operations.items() if op["action"] == "send"}
    assert sorted(sends) == [
        "admin.send.user.registered", "billing.send.invoice.sent", "orders.send.order.created",
        "shop.send.payment.failed", "users.send.user.registered",
    ]
    users = sends["users.send.user.registered"]
    assert users["x-service"] == "users" and users["tags"] == [{"name": "users"}]
    assert users["channel"] == {"$ref": "#/channels/user.registered"}
    assert users["messages"] == [
        {"$ref": "#/channels/user.registered/messages/user.registered.v1"},
        {"$ref": "#/channels/user.registered/messages/user.registered.v2"},
    ]
    assert sends["admin.send.user.registered"]["messages"] == [
        {"$ref": "#/channels/user.registered/messages/user.registered.unversioned"},
    ]


def test_a_receive_operation_per_handler_and_channel_with_only_the_versions_it_accepts() -> None:
    operations = fleet()["operations"]
    welcome = operations["orders.welcome_order.receive.user.registered"]
    assert welcome["action"] == "receive"
    assert welcome["x-handler"] == "orders.welcome_order" and welcome["x-versions"] == [2]
    assert welcome["x-celery-queue"] == "events.orders"
    # v2, and events without a version (they go to every matching handler)
    assert [m["$ref"].rsplit("/", 1)[1] for m in welcome["messages"]] == [
        "user.registered.v2", "user.registered.unversioned",
    ]
    legacy = operations["legacy.import_user.receive.user.registered"]
    assert [m["$ref"].rsplit("/", 1)[1] for m in legacy["messages"]] == [
        "user.registered.v1", "user.registered.unversioned",
    ]
    audit = operations["orders.audit_users.receive.user.registered"]
    assert len(audit["messages"]) == 3 and audit["x-pattern"] == "user.*"
    # a pattern handler is on every channel its pattern matches, or on the pattern's own
    assert "mailer.order_mail.receive.order.created" in operations
    assert "billing.dunning.receive.invoice._word_.failed" in operations
    assert "mailer.order_mail.receive.order._words_" not in operations


def test_a_handler_that_reads_the_data_with_its_own_model_shows_that_schema() -> None:
    document = fleet()
    sync = document["operations"]["crm.sync_contact.receive.user.registered"]
    assert sync["x-accepts"] == {"$ref": "#/components/schemas/crm.sync_contact.accepts"}
    contact = document["components"]["schemas"]["crm.sync_contact.accepts"]
    assert contact["properties"]["user_id"] == {"title": "User Id", "type": "integer"}
    assert "#/components/schemas/crm.sync_contact.accepts/$defs/Address" in json.dumps(contact)


def test_on_redis_the_server_hides_the_password_and_has_no_amqp_bindings() -> None:
    document = fleet(REDIS)
    assert document["servers"] == {
        "redis": {
            "host": "cache.internal:6380",
            "protocol": "redis",
            "pathname": "/2",
            "description": "The redis broker: redis://:***@cache.internal:6380/2.",
        }
    }
    assert "s3cret" not in to_json(document)
    assert all("bindings" not in c for c in document["channels"].values())
    assert all("bindings" not in o for o in document["operations"].values())


def test_on_sentinel_the_server_is_the_first_sentinel_and_the_description_lists_all() -> None:
    server = fleet(SENTINEL)["servers"]["sentinel"]
    assert (server["host"], server["protocol"]) == ("s1:26379", "redis")
    assert "sentinel://:***@s1:26379;sentinel://:***@s2:26379" in server["description"]


def test_on_rabbitmq_channels_are_routing_keys_of_the_events_exchange() -> None:
    # Given subscriptions whose handler queues are quorum queues
    document = asyncapi_document(
        DECLARATIONS, subscriptions((("x-queue-type", "quorum"),)), backend=AMQP,
        published=PUBLISHED,
    )

    # Then the server is the node, the vhost its path
    assert document["servers"]["amqp"] == {
        "host": "rabbit.internal:5672", "protocol": "amqp", "protocolVersion": "0.9.1",
        "pathname": "/shop",
        "description": "The amqp broker: amqp://shop:***@rabbit.internal:5672/shop.",
    }
    # and every channel is a routing key of the durable topic exchange
    binding = document["channels"]["user.registered"]["bindings"]["amqp"]
    assert binding == {
        "is": "routingKey",
        "exchange": {"name": "celery_events", "type": "topic", "durable": True,
                     "autoDelete": False, "vhost": "shop"},
        "bindingVersion": "0.3.0",
    }
    # and each receive operation names its handler's queue, bound with the pattern
    audit = document["operations"]["orders.audit_users.receive.user.registered"]
    assert audit["bindings"]["amqp"]["x-queue"] == {
        "name": "events.orders", "durable": True, "exclusive": False, "autoDelete": False,
        "vhost": "shop", "bindingKey": "user.*", "arguments": {"x-queue-type": "quorum"},
    }
    assert audit["bindings"]["amqp"]["ack"] is True


def test_one_version_declared_differently_by_two_services_is_two_messages() -> None:
    # Given two services that declared v1 of one name with different schemas
    both = [declared("users", "user.deleted", 1, V1), declared("admin", "user.deleted", 1, {})]
    document = asyncapi_document(both, [], backend=REDIS)

    # Then each has its message, told apart by its source
    messages = document["components"]["messages"]
    assert sorted(document["channels"]["user.deleted"]["messages"]) == [
        "user.deleted.v1.admin", "user.deleted.v1.users",
    ]
    assert messages["user.deleted.v1.users"]["payload"]["properties"]["source"] == {
        "const": "users"
    }
    assert document["operations"]["admin.send.user.deleted"]["messages"] == [
        {"$ref": "#/channels/user.deleted/messages/user.deleted.v1.admin"}
    ]
    # while the same schema declared twice is one message of both publishers
    same = [declared("users", "user.deleted", 1, V1), declared("admin", "user.deleted", 1, V1)]
    one = asyncapi_document(same, [], backend=REDIS)["components"]["messages"]
    assert list(one) == ["user.deleted.v1"] and one["user.deleted.v1"]["x-publishers"] == [
        "admin", "users",
    ]


def test_info_has_a_title_and_a_version_by_default_and_as_given() -> None:
    info = fleet()["info"]
    # the newest registration's date
    assert (info["title"], info["version"]) == ("celery-events fleet", "2026-05-28")
    given = fleet(title="Shop events", version="2.4.0")["info"]
    assert (given["title"], given["version"]) == ("Shop events", "2.4.0")
    assert fleet()["defaultContentType"] == "application/json"


def test_yaml_is_the_same_document() -> None:
    yaml = pytest.importorskip("yaml")
    document = fleet(AMQP)
    assert yaml.safe_load(to_yaml(document)) == document


def test_yaml_without_pyyaml_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(ConfigurationError, match=r"PyYAML: pip install 'celery-events\[contracts\]'"):
        to_yaml(fleet())


WORD = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,4}", fullmatch=True)
SERVICE = st.from_regex(r"[a-z][a-z0-9_-]{0,4}", fullmatch=True)
NAMES = st.lists(WORD, min_size=1, max_size=3).map(".".join)
PATTERNS = st.lists(st.one_of(WORD, st.sampled_from(["*", "#"])), min_size=1, max_size=3).map(
    ".".join
)
SCHEMAS = st.sampled_from([None, V1, V2, ORDER, {}])


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[RegisteredDeclaration], list[Subscription]]:
    declarations = {
        (service, name, version): declared(service, name, version, draw(SCHEMAS))
        for service, name, version in draw(
            st.lists(st.tuples(SERVICE, NAMES, st.integers(1, 3)), max_size=6)
        )
    }
    subscriptions = {
        (service, handler): Subscription(
            pattern, service, f"{service}.{handler}", f"events.{service}",
            versions=tuple(sorted(draw(st.sets(st.integers(1, 3), max_size=2)))),
        )
        for service, handler, pattern in draw(
            st.lists(st.tuples(SERVICE, WORD, PATTERNS), max_size=6)
        )
    }
    return list(declarations.values()), list(subscriptions.values())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fleet=fleets(),
    published=st.lists(st.tuples(SERVICE, NAMES), max_size=3),
    broker=st.sampled_from([REDIS, AMQP]),
)
def test_any_fleet_gives_a_valid_document(
    fleet: tuple[list[RegisteredDeclaration], list[Subscription]],
    published: list[tuple[str, str]],
    broker: Broker,
    asyncapi_schema: dict[str, Any],
) -> None:
    declarations, subscriptions = fleet
    document = asyncapi_document(declarations, subscriptions, backend=broker, published=published)
    assert asyncapi_errors(document, asyncapi_schema) == []
    # every handler is on at least one channel, every publisher sends on its names
    receivers = {op["x-handler"] for op in document["operations"].values() if "x-handler" in op}
    assert receivers == {s.handler for s in subscriptions}
    senders = {
        (op["x-service"], op["channel"]["$ref"].rsplit("/", 1)[1])
        for op in document["operations"].values() if op["action"] == "send"
    }
    assert senders == {
        (service, channel_key(name))
        for service, name in [*published, *((d.service, d.name) for d in declarations)]
    }
