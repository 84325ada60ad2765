"""Declarations against what the fleet registered: `bus.register()` and the checks of
`celery eventbus check`, on the in-process memory backend (no broker)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_events import Event, EventBus, IncompatibleSchema
from celery_events.backends import memory
from celery_events.contracts import check, snapshot
from celery_events.contracts.schemas import schema_from
from celery_events.declarations import Declaration
from celery_events.registry import RegisteredDeclaration, Subscription

V1 = {
    "type": "object",
    "properties": {"order_id": {"type": "integer"}, "total": {"type": "number"}},
    "required": ["order_id"],
}
# A new optional field: every v1 event still reads (BACKWARD keeps).
V1_WITH_NOTE = {
    **V1,
    "properties": {**V1["properties"], "note": {"type": "string"}},
}
# total narrowed from number to integer: a v1 event with total 9.5 no longer reads.
V1_NARROWED = {
    **V1,
    "properties": {"order_id": {"type": "integer"}, "total": {"type": "integer"}},
}
V2 = {
    "type": "object",
    "properties": {"order_id": {"type": "string"}, "total": {"type": "number"}},
    "required": ["order_id", "total"],
}


BUSES: list[EventBus] = []


@pytest.fixture
def space() -> Iterator[str]:
    """A memory:// registry of this test's own; its buses are closed after the test."""
    url = f"memory://{uuid.uuid4().hex}"
    yield url
    while BUSES:
        BUSES.pop().close()
    memory.reset()


def make_bus(space: str, service: str = "shop") -> EventBus:
    """A new deploy of ``service`` (its own Celery app) on the registry ``space``."""
    bus = EventBus(Celery(service, broker=space), service=service)
    BUSES.append(bus)
    return bus


def registered(bus: EventBus, name: str = "order.created") -> list[RegisteredDeclaration]:
    return [d for d in bus.registry.declarations() if d.name == name]


def test_register_records_declarations_with_the_subscriptions(space: str) -> None:
    # Given a service that publishes order.created v1 and subscribes to user.registered
    bus = make_bus(space)
    bus.declare("order.created", schema=V1, sensitive=["total"])

    @bus.subscribe("user.registered")
    def welcome(event: Event) -> None: ...

    # When it registers
    subscriptions = bus.register()

    # Then the registry holds its declaration beside its subscription, without a history yet
    assert [s.handler for s in subscriptions] == ["shop.welcome"]
    (declared,) = registered(bus)
    assert (declared.service, declared.version, declared.compatibility) == ("shop", 1, "BACKWARD")
    assert declared.schema == V1 and declared.history == ()
    assert declared.sensitive == ("total",)
    assert declared.dataschema == "urn:celery-events:schema:order.created:1"


def test_a_compatible_change_is_recorded_with_the_previous_schema_in_its_history(
    space: str,
) -> None:
    # Given order.created v1 registered by an earlier deploy
    first = make_bus(space)
    first.declare("order.created", schema=V1)
    first.register()

    # When the next deploy adds an optional field, and then registers again unchanged
    second = make_bus(space)
    second.declare("order.created", schema=V1_WITH_NOTE)
    second.register()
    second.register()

    # Then the new schema is current and the old one is its history, once
    (declared,) = registered(second)
    assert declared.schema == V1_WITH_NOTE
    assert declared.history == (V1,)
    assert declared.schemas == (V1, V1_WITH_NOTE)


def test_an_incompatible_schema_is_refused_with_a_readable_diff_and_nothing_is_written(
    space: str,
) -> None:
    # Given order.created v1 registered, and the shop's record as it stands
    first = make_bus(space)
    first.declare("order.created", schema=V1)
    first.register()
    before = first.registry.declarations()

    # When a deploy narrows total to an integer under the same version
    second = make_bus(space)
    second.declare("order.created", schema=V1_NARROWED)
    with pytest.raises(IncompatibleSchema) as refused:
        second.register()

    # Then the error says what breaks, where, and what to do, and lists the changes
    message = str(refused.value)
    assert "order.created v1:" in message
    assert "total" in message
    assert "under BACKWARD" in message
    assert "Declare it as version 2, or a new name, or compatibility='NONE'." in message
    assert "nothing was recorded" in message
    assert refused.value.changes and all(c.path == "total" for c in refused.value.changes)
    # And the registry still holds the old record
    assert second.registry.declarations() == before
    assert registered(second)[0].schema == V1


def test_the_same_change_under_compatibility_none_is_recorded(space: str) -> None:
    first = make_bus(space)
    first.declare("order.created", schema=V1)
    first.register()

    second = make_bus(space)
    second.declare("order.created", schema=V1_NARROWED, compatibility="NONE")
    second.register()

    assert registered(second)[0].schema == V1_NARROWED


def test_a_new_version_is_never_checked_against_another(space: str) -> None:
    # Given v1 registered
    first = make_bus(space)
    first.declare("order.created", schema=V1)
    first.register()

    # When a deploy declares a breaking v2 beside v1
    second = make_bus(space)
    second.declare("order.created", schema=V1)
    second.declare("order.created", schema=V2, version=2)
    second.register()

    # Then both are recorded
    assert [(d.version, d.schema) for d in registered(second)] == [(1, V1), (2, V2)]


def test_another_services_schema_of_the_same_version_is_checked_too(space: str) -> None:
    # Given billing registered order.created v1 (two services publish the name)
    billing = make_bus(space, "billing")
    billing.declare("order.created", schema=V1)
    billing.register()

    # When the shop declares the same version with a narrower schema
    shop = make_bus(space, "shop")
    shop.declare("order.created", schema=V1_NARROWED)

    # Then it is refused, naming who registered the schema it breaks
    with pytest.raises(IncompatibleSchema, match=r"registered \(by billing\)"):
        shop.register()


def test_registered_schemas_are_every_services_oldest_first_once_each() -> None:
    older = RegisteredDeclaration(
        "billing", "order.created", 1, schema=V1_WITH_NOTE, history=(V1,), registered_at=1.0
    )
    newer = RegisteredDeclaration("shop", "order.created", 1, schema=V1, registered_at=2.0)
    other_version = RegisteredDeclaration("shop", "order.created", 2, schema=V2, registered_at=3.0)

    found = check.registered_schemas([newer, other_version, older], "order.created", 1)

    # V1 was registered again last, so it is the one a plain mode checks against
    assert found == [V1_WITH_NOTE, V1]


WITHOUT_TOTAL = {**V1, "properties": {"order_id": {"type": "integer"}}}
TOTAL_A_STRING = {**V1, "properties": {**V1["properties"], "total": {"type": "string"}}}


@pytest.mark.parametrize(("mode", "refused"), [("BACKWARD", False), ("BACKWARD_TRANSITIVE", True)])
def test_a_transitive_mode_checks_every_schema_registered_before(
    space: str, mode: str, refused: bool
) -> None:
    # Given v1 went from total a number to no total (an open object: compatible)
    for schema in (V1, WITHOUT_TOTAL):
        make_bus(space).declare("order.created", schema=schema, compatibility=mode)
        last = BUSES[-1]
        last.register()
    assert registered(last)[0].history == (V1,)

    # When a deploy brings total back as a string: compatible with the last, not the first
    bus = make_bus(space)
    bus.declare("order.created", schema=TOTAL_A_STRING, compatibility=mode)

    # Then only the transitive mode refuses it
    if refused:
        with pytest.raises(IncompatibleSchema, match="total"):
            bus.register()
    else:
        bus.register()
        assert registered(bus)[0].history == (V1, WITHOUT_TOTAL)


def test_a_removed_version_a_subscriber_still_needs_is_breaking() -> None:
    # Given the shop registered v1 and v2, and billing accepts only v1
    registered = [
        RegisteredDeclaration("shop", "order.created", 1, schema=V1),
        RegisteredDeclaration("shop", "order.created", 2, schema=V2),
    ]
    subscriptions = [
        _subscription("order.created", "billing.charge", versions=(1,)),
        _subscription("order.*", "audit.log"),
    ]

    # When the shop's code now declares only v2
    local = _declarations(("order.created", V2, 2))
    found = check.removed_versions("shop", local, registered, subscriptions)

    # Then billing's subscription is reported, the audit's (every version) is not
    assert [b.summary for b in found] == [
        "order.created v1 is no longer declared, and billing.charge accepts only v1"
    ]
    # And while another service still declares v1, nothing is
    still = [*registered, RegisteredDeclaration("legacy", "order.created", 1, schema=V1)]
    assert check.removed_versions("shop", local, still, subscriptions) == []


def test_a_handler_whose_schema_cannot_read_a_publishers_is_breaking() -> None:
    # Given the shop publishes order.created v1 with total a number
    registered = [RegisteredDeclaration("shop", "order.created", 1, schema=V1)]
    # When billing's handler accepts only an integer total, and another handler only v2
    strict = {**V1_NARROWED, "required": ["order_id"]}
    subscriptions = [
        _subscription("order.created", "billing.charge", accepts=strict),
        _subscription("order.created", "billing.later", versions=(2,), accepts=strict),
    ]
    found = check.reader_problems(subscriptions, registered)

    # Then the first is reported with the change, the one not accepting v1 is not
    assert [(b.name, b.version, b.summary) for b in found] == [
        ("order.created", 1, "billing.charge cannot read what shop publishes")
    ]
    assert found[0].changes[0].path == "total"


def test_the_report_groups_each_name_and_version() -> None:
    found = [
        check.Breaking("order.created", 1, check.VERSION_REMOVED, "a", fix="do x"),
        check.Breaking("audit.written", None, check.SCHEMA, "b"),
        check.Breaking("order.created", 1, check.READER, "c"),
    ]
    assert check.report(found).splitlines() == [
        "audit.written:",
        "  b",
        "order.created v1:",
        "  a",
        "    do x",
        "  c",
    ]


def test_a_contracts_file_is_stable_and_keeps_the_other_services(tmp_path: Path) -> None:
    path = tmp_path / "contracts.json"
    shop = check.with_history("shop", _declarations(("order.created", V1, 1)), [])
    billing = check.with_history("billing", _declarations(("invoice.sent", V2, 1)), [])
    charge = _subscription("order.created", "billing.charge", versions=(1,), accepts=V1)

    snapshot.write(path, "shop", shop, [])
    snapshot.write(path, "billing", billing, [charge])
    first = path.read_bytes()
    snapshot.write(path, "shop", shop, [])

    assert path.read_bytes() == first
    assert json.loads(first)["format"] == snapshot.FORMAT
    declarations, subscriptions = snapshot.read(path)
    assert [(d.service, d.name, d.version, d.schema) for d in declarations] == [
        ("billing", "invoice.sent", 1, V2),
        ("shop", "order.created", 1, V1),
    ]
    assert subscriptions == [charge]
    assert subscriptions[0].accepts == V1


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (None, "does not exist"),
        ("{not json", "is not JSON"),
        ('{"services": {}}', "is not a contracts file"),
        ('{"format": "celery-events contracts 1", "services": {"shop": {"subscriptions": 3}}}',
         "service 'shop': its subscriptions are 3, not a list."),
    ],
)
def test_a_bad_contracts_file_is_a_clear_error(tmp_path: Path, text: str | None, says: str) -> None:
    path = tmp_path / "contracts.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(snapshot.ContractsFileError, match=says):
        snapshot.read(path)


def _subscription(
    pattern: str, handler: str, versions: tuple[int, ...] = (), accepts: Any = None
) -> Subscription:
    service = handler.split(".")[0]
    return Subscription(
        pattern, service, handler, f"events.{service}", versions=versions, accepts=accepts
    )


def _declarations(*entries: tuple[str, dict[str, Any], int]) -> list[Declaration]:
    found = []
    for name, document, version in entries:
        schema = schema_from(document, name)
        found.append(Declaration(name, schema=schema, version=version, fingerprint=schema.fingerprint))
    return found
