"""Contracts at run time: validation at publish and on receipt, versions, pydantic handlers.

Memory backend: publisher and subscriber buses in this process, deliveries run by the
testing kit through the real delivery task.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from celery import Celery
from pydantic import BaseModel

from celery_events import (
    ConfigurationError,
    Event,
    EventBus,
    EventNotDeclared,
    InvalidEnvelope,
    SchemaError,
)
from celery_events.backends import memory
from celery_events.contracts.middleware import Contracts, ContractsOnReceipt
from celery_events.testing import HandlerRunner, capture_published

MEMORY = "memory://"

ORDER = {
    "type": "object",
    "required": ["order_id", "items"],
    "properties": {
        "order_id": {"type": "integer"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["sku", "qty"],
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
            },
        },
    },
}
ORDER_V1 = {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}


class UserRegistered(BaseModel):
    user_id: int
    email: str


@pytest.fixture
def buses() -> Iterator[dict[str, EventBus]]:
    made: dict[str, EventBus] = {}

    def bus(service: str, **settings: object) -> EventBus:
        made[service] = EventBus(
            Celery(service, broker=MEMORY), service=service, retry_jitter=False, **settings
        )
        return made[service]

    yield bus  # type: ignore[misc]
    for bus_ in made.values():
        bus_.close()
    memory.reset()


def order(qty: object = 1) -> dict[str, object]:
    return {"order_id": 7, "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": qty}]}


def register_declarations(publisher: EventBus, subscriber: EventBus) -> None:
    # What the publisher's worker (or `celery eventbus register`) records.
    subscriber.registry.register(publisher.service, [], declarations=publisher.declarations)  # type: ignore[arg-type]


# -- publishing ------------------------------------------------------------------------------


def test_data_breaking_the_declared_schema_raises_naming_version_path_and_rule(buses) -> None:
    shop = buses("shop")
    shop.declare("order.created", schema=ORDER, version=2)
    with capture_published(shop) as published:
        with pytest.raises(SchemaError) as raised:
            shop.publish("order.created", order(qty="x"))
    assert str(raised.value) == (
        'order.created v2 data: "x" is not of type "integer" (at items[1].qty; rule type).'
    )
    assert (raised.value.path, raised.value.rule) == ("items[1].qty", "type")
    assert len(published) == 0  # nothing sent
    required = r'"items" is a required property \(at the data itself; rule required\)'
    with pytest.raises(SchemaError, match=required):
        shop.publish("order.created", {"order_id": 7})


def test_valid_data_is_published_with_the_declarations_dataschema(buses) -> None:
    shop = buses("shop")
    shop.declare("order.created", schema=ORDER, version=2)
    with capture_published(shop) as published:
        shop.publish("order.created", order())
    assert published[0].dataschema == "urn:celery-events:schema:order.created:2"


def test_the_schema_check_is_the_outermost_publish_scope(buses) -> None:
    from celery_events import Middleware

    class Defer(Middleware):
        def publish(self, call, call_next):  # type: ignore[no-untyped-def]
            raise AssertionError("reached a deferring middleware")

    shop = EventBus(Celery("shop", broker=MEMORY), service="shop", middleware=[Defer()])
    try:
        shop.declare("order.created", schema=ORDER)
        assert isinstance(shop.middleware.middleware[0], Contracts)
        with pytest.raises(SchemaError):
            shop.publish("order.created", {"order_id": "seven"})
    finally:
        shop.close()


def test_an_instance_of_the_declared_model_is_published_as_its_json(buses) -> None:
    members = buses("members")
    members.declare("user.registered", schema=UserRegistered)
    with capture_published(members) as published:
        members.publish("user.registered", UserRegistered(user_id=1, email="a@b.c"))  # type: ignore[arg-type]
    assert published[0].data == {"user_id": 1, "email": "a@b.c"}


def test_version_picks_the_declaration_and_an_unknown_one_is_not_declared(buses) -> None:
    shop = buses("shop")
    shop.declare("order.created", schema=ORDER_V1, version=1)
    shop.declare("order.created", schema=ORDER, version=2)
    with capture_published(shop) as published:
        shop.publish("order.created", {"id": 7}, version=1)
        shop.publish("order.created", order())  # the highest version by default
        with pytest.raises(SchemaError, match="order.created v1 data"):
            shop.publish("order.created", order(), version=1)
    assert [e.dataschema for e in published] == [
        "urn:celery-events:schema:order.created:1", "urn:celery-events:schema:order.created:2",
    ]
    with pytest.raises(EventNotDeclared, match="version 3 is not declared"):
        shop.publish("order.created", order(), version=3)


def test_publish_event_is_validated_and_gets_the_dataschema_of_its_declaration(buses) -> None:
    shop = buses("shop")
    shop.declare("order.created", schema=ORDER_V1, version=1)
    shop.declare("order.created", schema=ORDER, version=2)
    made = Event.create("order.created", {"id": 1}, source="shop")
    v1 = Event.create(
        "order.created", {"id": 1}, source="shop",
        dataschema="urn:celery-events:schema:order.created:1",
    )
    v9 = Event.create(
        "order.created", {"id": 1}, source="shop",
        dataschema="urn:celery-events:schema:order.created:9",
    )
    with capture_published(shop) as published:
        with pytest.raises(SchemaError, match="order.created v2 data"):
            shop.publish_event(made)  # no dataschema: the highest version's
        shop.publish_event(v1)
        with pytest.raises(EventNotDeclared, match="names no version"):
            shop.publish_event(v9)
    assert [e.id for e in published] == [v1.id]


def test_require_declarations_refuses_undeclared_names_on_every_path(buses) -> None:
    shop = buses("shop", require_declarations=True)
    shop.declare("order.created", schema=ORDER)
    with pytest.raises(EventNotDeclared, match="only declared events"):
        shop.publish("order.paid", {})
    with pytest.raises(EventNotDeclared, match="only declared events"):
        shop.publish_event(Event.create("order.paid", {}, source="shop"))


def test_a_bus_without_contracts_keeps_an_empty_chain(buses) -> None:
    plain = buses("plain")
    plain.declare("user.registered", sensitive=["email"])  # no schema: nothing to validate
    assert plain.middleware.publish_scope is None and len(plain.middleware) == 0

    # A subscribing bus gets the check on receipt only: its publishes still pay nothing.
    subscriber = buses("subscriber")
    @subscriber.subscribe("user.registered")
    def welcome(event: Event) -> None: ...

    assert subscriber.middleware.publish_scope is None
    assert [type(m) for m in subscriber.middleware] == [ContractsOnReceipt]

    # The first declared schema makes it check publishes too, still as the outermost.
    subscriber.declare("user.welcomed", schema={"type": "object"})
    assert [type(m) for m in subscriber.middleware] == [Contracts]
    assert subscriber.middleware.publish_scope is not None


# -- versions on the wire ---------------------------------------------------------------------


def test_each_subscriber_gets_the_versions_it_accepts_and_the_skip_is_logged_once(
    buses, caplog: pytest.LogCaptureFixture
) -> None:
    shop = buses("shop")
    shop.declare("order.created", schema=ORDER_V1, version=1)
    shop.declare("order.created", schema=ORDER, version=2)
    billing = buses("billing")
    got: dict[str, list[int | None]] = {"charge": [], "audit": []}

    @billing.subscribe("order.created", versions=[1])
    def charge(event: Event) -> None:
        got["charge"].append(event.data.get("id", event.data.get("order_id")))  # type: ignore[arg-type]

    @billing.subscribe("order.created")
    def audit(event: Event) -> None:
        got["audit"].append(event.data.get("id", event.data.get("order_id")))  # type: ignore[arg-type]

    billing.register()
    with caplog.at_level(logging.WARNING, logger="celery_events._publish"):
        v1 = shop.publish("order.created", {"id": 1}, version=1)
        v2 = shop.publish("order.created", order())
        again = shop.publish("order.created", order())
    assert [d.handler for d in v1.deliveries] == ["billing.charge", "billing.audit"]
    assert [d.handler for d in v2.deliveries] == ["billing.audit"]
    assert len(again.deliveries) == 1
    warnings = [
        r.getMessage() for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "celery_events._publish"
    ]
    assert warnings == [
        "celery-events: order.created v2 not delivered to billing.charge: it accepts"
        " order.created v1 only"
    ]
    HandlerRunner().work(billing)
    assert got == {"charge": [1], "audit": [1, 7, 7]}


def test_require_subscribers_counts_only_those_accepting_the_version(buses) -> None:
    shop = buses("shop")
    shop.declare("order.created", schema=ORDER_V1, version=1)
    shop.declare("order.created", schema=ORDER, version=2)
    billing = buses("billing")
    billing.subscribe("order.created", versions=[1], name="charge")(lambda event: None)
    billing.register()
    from celery_events import NoSubscribersError

    with pytest.raises(NoSubscribersError):
        shop.publish("order.created", order(), require_subscribers=True)
    assert shop.publish("order.created", {"id": 1}, version=1, require_subscribers=True).deliveries


# -- on receipt -------------------------------------------------------------------------------


def test_data_breaking_the_registered_declaration_is_dead_lettered_unrun(buses) -> None:
    shop = buses("shop")
    shop.declare("order.created", schema=ORDER, version=2)
    billing = buses("billing")
    ran: list[Event] = []

    @billing.subscribe("order.created")
    def charge(event: Event) -> None:
        ran.append(event)

    register_declarations(shop, billing)
    # Sent by a producer that does not validate (another bus of the same service name).
    broken = Event.create(
        "order.created", order(qty="x"), source="shop",
        dataschema="urn:celery-events:schema:order.created:2",
    )
    [run] = HandlerRunner().run(billing, broken)
    assert (run.status, run.reason, run.attempts) == ("dead_lettered", "schema_mismatch", 0)
    assert ran == []
    [letter] = billing.dead_letters.list()
    assert letter.reason == "schema_mismatch"
    assert letter.error_message == (
        f"Event {broken.id} refused: order.created v2 data (as shop declares it):"
        ' "x" is not of type "integer" (at items[1].qty; rule type).'
    )
    [good] = HandlerRunner().run(billing, Event.create(
        "order.created", order(), source="shop",
        dataschema="urn:celery-events:schema:order.created:2",
    ))
    assert good.status == "succeeded" and len(ran) == 1


def test_a_version_the_handler_does_not_accept_is_refused_on_receipt(buses) -> None:
    billing = buses("billing")
    billing.subscribe("order.created", versions=[1], name="charge")(lambda event: None)
    v2 = Event.create(
        "order.created", {"id": 1}, source="shop",
        dataschema="urn:celery-events:schema:order.created:2",
    )
    # The runner delivers as a publisher would: not at all.
    assert HandlerRunner().run(billing, v2) == []
    # A copy that reaches the handler anyway (a raw envelope, an old publisher) is refused.
    task_id = billing._resend(v2.to_envelope(), "billing.charge", "events.billing")
    [run] = HandlerRunner().work(billing)
    assert (run.task_id, run.status, run.reason) == (task_id, "dead_lettered", "schema_mismatch")
    assert "billing.charge accepts order.created v1 only" in str(run.error)


def test_a_handlers_own_schema_is_checked_on_receipt(buses) -> None:
    billing = buses("billing")
    billing.subscribe("order.created", schema=ORDER, name="charge")(lambda event: None)
    [run] = HandlerRunner().run(billing, Event.create("order.created", {"id": 1}, source="shop"))
    assert (run.status, run.reason) == ("dead_lettered", "schema_mismatch")
    assert "order.created data (as billing.charge accepts it)" in str(run.error)
    [ok] = HandlerRunner().run(billing, Event.create("order.created", order(), source="shop"))
    assert ok.status == "succeeded"


# -- pydantic handlers ------------------------------------------------------------------------


def test_a_parameter_typed_with_a_model_gets_the_data_parsed(buses) -> None:
    mailer = buses("mailer")
    got: list[object] = []

    @mailer.subscribe("user.registered")
    def welcome(user: UserRegistered) -> None:
        got.append(user)

    @mailer.subscribe("user.registered")
    def audit(user: UserRegistered, event: Event) -> None:
        got.append((event.name, user.user_id))

    @mailer.subscribe("user.registered")
    def count(event, user: UserRegistered) -> None:  # type: ignore[no-untyped-def]
        got.append((event.id, user.email))

    event = Event.create("user.registered", {"user_id": 3, "email": "a@b.c"}, source="members")
    runs = HandlerRunner().run(mailer, event)
    assert [r.status for r in runs] == ["succeeded"] * 3
    assert got == [
        UserRegistered(user_id=3, email="a@b.c"), ("user.registered", 3), (event.id, "a@b.c"),
    ]
    # The model's schema is what the handler accepts, recorded in the registry.
    assert mailer.handlers[0].accepts is not None
    assert mailer.subscriptions()[0].accepts == mailer.handlers[0].accepts.document
    # Called directly in a test, the function is the one that was decorated.
    assert welcome(UserRegistered(user_id=1, email="x")) is None


def test_data_the_model_refuses_is_dead_lettered_and_never_retried(buses) -> None:
    mailer = buses("mailer")
    ran: list[object] = []

    @mailer.subscribe("user.registered", max_retries=3)
    def welcome(user: UserRegistered) -> None:
        ran.append(user)

    [run] = HandlerRunner().run(
        mailer, Event.create("user.registered", {"user_id": "three"}, source="members")
    )
    assert (run.status, run.reason, run.retry_delays) == ("dead_lettered", "schema_mismatch", ())
    assert ran == []


def test_a_model_that_refuses_what_its_json_schema_allows_is_a_schema_mismatch(buses) -> None:
    from pydantic import field_validator

    class Positive(BaseModel):
        n: int

        @field_validator("n")
        @classmethod
        def positive(cls, value: int) -> int:
            if value <= 0:
                raise ValueError("n must be positive")
            return value

    mailer = buses("mailer")
    mailer.subscribe("x.y", name="h", max_retries=3)(lambda p: None)  # plain handler beside
    mailer.subscribe("x.y", name="typed", max_retries=3)(_typed(Positive))
    runs = HandlerRunner().run(mailer, Event.create("x.y", {"n": -1}, source="s"))
    assert [(r.handler, r.status, r.reason) for r in runs] == [
        ("mailer.h", "succeeded", None), ("mailer.typed", "dead_lettered", "schema_mismatch"),
    ]


def _typed(model: type[BaseModel]):  # type: ignore[no-untyped-def]
    def handler(data) -> None:  # type: ignore[no-untyped-def]
        assert isinstance(data, model)

    handler.__annotations__["data"] = model
    return handler


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (lambda: None, "takes 0 positional argument"),
        (lambda a, b: None, "takes 2 positional argument"),
        (lambda e, *, tenant: None, "needs keyword argument 'tenant'"),
    ],
)
def test_a_signature_no_delivery_fits_is_refused_at_subscribe(buses, handler, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError, match=message):
        buses("mailer").subscribe("user.registered", name="h")(handler)


def test_two_models_or_a_model_and_another_type_are_refused(buses) -> None:
    mailer = buses("mailer")

    def two(a: UserRegistered, b: UserRegistered) -> None: ...

    def other(a: UserRegistered, b: int) -> None: ...

    with pytest.raises(ConfigurationError, match="are all pydantic models"):
        mailer.subscribe("user.registered")(two)
    with pytest.raises(ConfigurationError, match="may take the event"):
        mailer.subscribe("user.registered")(other)


def test_publishing_refuses_a_dataschema_other_than_the_declared_one(buses) -> None:
    shop = buses("shop")
    shop.declare("order.created", schema=ORDER, version=2)
    with pytest.raises(InvalidEnvelope, match="Leave dataschema out"):
        shop.publish("order.created", order(), dataschema="https://example.com/other")


def test_annotations_are_resolved_and_an_unresolvable_one_is_refused(buses) -> None:
    mailer = buses("mailer")

    # This module's annotations are strings (from __future__ import annotations).
    def typed_by_name(user: UserRegistered) -> None: ...

    def event_only_for_type_checkers(event: celery_events.Event) -> None: ...  # noqa: F821

    def unknown(user: NotImported) -> None: ...  # noqa: F821

    mailer.subscribe("user.registered")(typed_by_name)
    mailer.subscribe("user.registered")(event_only_for_type_checkers)
    assert [h.accepts is not None for h in mailer.handlers] == [True, False]
    with pytest.raises(ConfigurationError, match="'NotImported' of parameter 'user' cannot be resolved"):
        mailer.subscribe("user.registered")(unknown)


def test_a_name_declared_without_a_version_keeps_any_dataschema(buses) -> None:
    members = buses("members")
    members.declare("user.registered", sensitive=["email"])
    own = Event.create(
        "user.registered", {"email": "a@b.c"}, source="members",
        dataschema="https://schemas.example.com/user-registered.json",
    )
    with capture_published(members) as published:
        members.publish_event(own)
    assert published[0].dataschema == own.dataschema


def test_a_schema_mismatch_is_replayed_against_the_declaration_in_force_then(buses) -> None:
    # Given a delivery dead-lettered for breaking the registered v2 schema
    shop = buses("shop")
    shop.declare("order.created", schema=ORDER, version=2)
    billing = buses("billing")
    ran: list[Event] = []
    billing.subscribe("order.created", name="charge")(ran.append)
    register_declarations(shop, billing)
    broken = Event.create(
        "order.created", order(qty="2"), source="shop",
        dataschema="urn:celery-events:schema:order.created:2",
    )
    [run] = HandlerRunner().run(billing, broken)
    assert run.reason == "schema_mismatch"

    # When the shop registers a v2 schema that allows the data, and the dead letter is replayed
    relaxed = buses("shop2")
    loose = {**ORDER, "properties": {**ORDER["properties"], "items": {"type": "array"}}}
    relaxed.declare("order.created", schema=loose, version=2)
    billing.registry.register("shop", [], declarations=relaxed.declarations)  # type: ignore[arg-type]
    billing.registry.refresh()
    billing.dead_letters.replay(run.task_id)

    # Then the replay is judged on receipt by today's declaration, and handled
    [replayed] = HandlerRunner().work(billing)
    assert replayed.status == "succeeded" and [e.id for e in ran] == [broken.id]
