"""Event.extensions, subject and dataschema: the CloudEvents rules, at publish and on receipt."""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Iterator
from dataclasses import FrozenInstanceError
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery import Celery
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_events import Event, EventBus, InvalidEnvelope
from celery_events._attributes import MAX_ATTRIBUTES_SIZE, NO_EXTENSIONS, RESERVED, Extensions
from celery_events.backends import memory
from celery_events.testing import HandlerRunner, capture_published

WHEN = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def envelope(**members: Any) -> dict[str, Any]:
    """A valid envelope as this bus writes it, with ``members`` added or replaced."""
    base = Event.create("order.placed", {"order_id": 7}, source="shop", time=WHEN).to_envelope()
    base.update(members)
    return base


@pytest.fixture
def bus() -> Iterator[EventBus]:
    # The memory backend: new_event and capture_published only validate, and the
    # HandlerRunner runs deliveries through the real delivery task in this process.
    bus = EventBus(Celery("extshop", broker="memory://"), service="extshop")
    yield bus
    bus.close()
    memory.reset()


# -- publishing ----------------------------------------------------------------------------


def test_extensions_subject_and_dataschema_go_in_the_envelope_before_the_data() -> None:
    event = Event.create(
        "order.placed",
        {"order_id": 7},
        source="shop",
        time=WHEN,
        extensions={"traceparent": TRACEPARENT, "priority": 2, "replayed": False},
        subject="order/7",
        dataschema="https://schemas.example.com/order-placed/1.json",
    )
    wire = event.to_envelope()
    assert list(wire) == [
        "specversion", "id", "type", "source", "time", "datacontenttype", "correlationid",
        "causationid", "subject", "dataschema", "traceparent", "priority", "replayed", "data",
    ]
    assert wire["traceparent"] == TRACEPARENT and wire["priority"] == 2
    assert wire["replayed"] is False
    assert wire["subject"] == "order/7"
    # And the JSON round trip gives the same event back
    received = Event.from_envelope(json.loads(json.dumps(wire)))
    assert received == event
    assert received.extensions == {"traceparent": TRACEPARENT, "priority": 2, "replayed": False}
    assert (received.subject, received.dataschema) == (event.subject, event.dataschema)


def test_an_event_without_extensions_has_the_envelope_of_before_and_shares_one_empty_mapping() -> None:
    event = Event.create("order.placed", {}, source="shop", time=WHEN)
    assert event.extensions is NO_EXTENSIONS
    assert event.subject is None and event.dataschema is None
    assert list(event.to_envelope()) == [
        "specversion", "id", "type", "source", "time", "datacontenttype", "correlationid",
        "causationid", "data",
    ]
    assert Event.from_envelope(event.to_envelope()).extensions is NO_EXTENSIONS


def test_extensions_are_immutable_and_copied_from_what_the_caller_passed() -> None:
    given = {"tenant": "acme"}
    event = Event.create("order.placed", {}, source="shop", extensions=given)
    given["tenant"] = "other"
    assert event.extensions == {"tenant": "acme"}
    with pytest.raises(TypeError):
        event.extensions["tenant"] = "x"  # type: ignore[index]
    with pytest.raises(FrozenInstanceError):
        event.extensions = {}  # type: ignore[misc]
    # A plain Event(...) freezes its mapping too
    direct = Event("1", "order.placed", {}, "shop", WHEN, "1", extensions={"a": 1})
    assert isinstance(direct.extensions, Extensions) and direct.extensions == {"a": 1}


def test_an_event_with_extensions_pickles_copies_and_hashes_its_extensions() -> None:
    event = Event.create("order.placed", {"x": 1}, source="shop", extensions={"tenant": "acme"})
    assert pickle.loads(pickle.dumps(event)) == event
    assert copy.deepcopy(event) == event
    assert hash(event.extensions) == hash(Extensions({"tenant": "acme"}))
    assert repr(event.extensions) == "{'tenant': 'acme'}"


def test_with_extensions_returns_a_new_checked_event() -> None:
    event = Event.create("order.placed", {}, source="shop", extensions={"tenant": "acme"})
    signed = event.with_extensions({"1x": "positional"}, sig="c2ln", keyid=3)
    assert signed.extensions == {"tenant": "acme", "1x": "positional", "sig": "c2ln", "keyid": 3}
    assert event.extensions == {"tenant": "acme"}
    assert (signed.id, signed.time, signed.data) == (event.id, event.time, event.data)
    # None takes an attribute out; the last one gone leaves the shared empty mapping
    assert signed.with_extensions(sig=None, keyid=None, tenant="x").extensions == {
        "tenant": "x", "1x": "positional"
    }
    assert event.with_extensions(tenant=None).extensions is NO_EXTENSIONS
    with pytest.raises(InvalidEnvelope, match="'Sig'.*lowercase ASCII letters and digits"):
        event.with_extensions({"Sig": "x"})
    with pytest.raises(InvalidEnvelope, match="'keyid' is a float"):
        event.with_extensions(keyid=1.5)


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("traceParent", "lowercase ASCII letters and digits only such as 'traceparent'"),
        ("trace_parent", "such as 'traceparent'"),
        ("", "lowercase ASCII letters and digits"),
        ("tenánt", "lowercase ASCII letters and digits"),
        ("ｔｅｎａｎｔ", "lowercase ASCII letters and digits"),
        (7, "lowercase ASCII letters and digits"),
        ("correlationid", "core attribute.*Pass correlation_id"),
        ("causationid", "Pass causation_id"),
        ("subject", "Pass subject="),
        ("dataschema", "Pass dataschema="),
        ("specversion", "core attribute"),
        ("data", "core attribute"),
    ],
)
def test_an_invalid_extension_name_is_refused_at_publish_naming_it_and_the_rule(
    name: object, rule: str
) -> None:
    with pytest.raises(InvalidEnvelope, match=rule) as raised:
        Event.create("order.placed", {}, source="shop", extensions={name: "x"})  # type: ignore[dict-item]
    assert repr(name) in str(raised.value)


def test_every_reserved_name_is_refused_as_an_extension() -> None:
    for name in RESERVED:
        with pytest.raises(InvalidEnvelope):
            Event.create("order.placed", {}, source="shop", extensions={name: "x"})


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (None, "is None; an extension that is not set is left out"),
        (1.5, "is a float"),
        (2.0, "is a float"),
        ({"a": 1}, "is dict.*strings, integers or booleans"),
        (["a"], "is list"),
        (b"raw", "is bytes.*base64"),
        (datetime(2026, 1, 1, tzinfo=timezone.utc), "is datetime.*isoformat"),
        (2**31, "outside the CloudEvents Integer range"),
        (-(2**31) - 1, "outside the CloudEvents Integer range"),
        ("line\nbreak", "U\\+000A at position 4.*control characters"),
        ("\x7f", "U\\+007F"),
        ("\ud800", "U\\+D800.*surrogates"),
        ("\ufffe", "U\\+FFFE.*noncharacters"),
        ("ok é \U0001fffe", "U\\+1FFFE at position 5"),
        ("😀\U0010ffff", "U\\+10FFFF at position 1"),
        ("é\x85", "U\\+0085 at position 1"),
        ("tab\there", "U\\+0009"),
    ],
)
def test_an_invalid_extension_value_is_refused_at_publish_naming_it_and_the_rule(
    value: object, rule: str
) -> None:
    with pytest.raises(InvalidEnvelope, match=f"attribute 'tenant' {rule}" if value is None else rule) as raised:
        Event.create("order.placed", {}, source="shop", extensions={"tenant": value})  # type: ignore[dict-item]
    assert "'tenant'" in str(raised.value)


@pytest.mark.parametrize(
    "value", [True, False, 0, 2**31 - 1, -(2**31), "", "Zoë ☃ 😀", "x" * 1000, TRACEPARENT]
)
def test_strings_integers_and_booleans_are_valid_values(value: object) -> None:
    event = Event.create("order.placed", {}, source="shop", extensions={"value": value})  # type: ignore[dict-item]
    assert Event.from_envelope(json.loads(json.dumps(event.to_envelope()))) == event


def test_long_names_are_valid_though_the_spec_recommends_twenty_characters() -> None:
    name = "a" * 40
    event = Event.create("order.placed", {}, source="shop", extensions={name: 1})
    assert Event.from_envelope(event.to_envelope()).extensions == {name: 1}


def test_extensions_are_limited_in_size() -> None:
    fits = {"sig": "x" * (MAX_ATTRIBUTES_SIZE - 20)}
    Event.create("order.placed", {}, source="shop", extensions=fits)
    with pytest.raises(InvalidEnvelope, match=f"over the {MAX_ATTRIBUTES_SIZE} bytes"):
        Event.create(
            "order.placed", {}, source="shop", extensions={"sig": "x" * MAX_ATTRIBUTES_SIZE}
        )
    with pytest.raises(InvalidEnvelope, match="over the"):
        Event.from_envelope(envelope(sig="x" * MAX_ATTRIBUTES_SIZE))
    # The budget is shared with subject and dataschema, counted as the JSON on the wire,
    # where each of these characters takes 6 bytes
    with pytest.raises(InvalidEnvelope, match=r"take \d+ bytes of JSON"):
        Event.create(
            "order.placed", {}, source="shop", extensions={"sig": "x" * 4000},
            subject="☃" * 1000,
        )
    with pytest.raises(InvalidEnvelope, match="over the"):
        Event.from_envelope(envelope(subject="☃" * 2000))
    event = Event.create("order.placed", {}, source="shop", subject="x" * 4000)
    with pytest.raises(InvalidEnvelope, match="over the"):
        event.with_extensions(sig="y" * 4200)


def test_extensions_that_are_not_a_mapping_are_refused() -> None:
    with pytest.raises(InvalidEnvelope, match="must be a mapping.*not list"):
        Event.create("order.placed", {}, source="shop", extensions=[("a", 1)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("attribute", "value", "rule"),
    [
        ("subject", "", "subject must be a non-empty string or None"),
        ("subject", 7, "subject must be a non-empty string"),
        ("subject", "a\x00b", "U\\+0000"),
        ("dataschema", "schemas/order.json", "not an absolute URI"),
        ("dataschema", "https://example.com/a b", "not an absolute URI"),
        ("dataschema", "", "non-empty string"),
    ],
)
def test_subject_and_dataschema_follow_the_cloudevents_rules(
    attribute: str, value: object, rule: str
) -> None:
    with pytest.raises(InvalidEnvelope, match=rule):
        Event.create("order.placed", {}, source="shop", **{attribute: value})  # type: ignore[arg-type]
    with pytest.raises(InvalidEnvelope, match=f"The envelope's {attribute}"):
        Event.from_envelope(envelope(**{attribute: value}))


def test_publish_event_checks_the_extensions_of_an_event_made_by_hand(bus: EventBus) -> None:
    made = Event("1", "order.placed", {}, "shop", WHEN, "1", extensions={"Bad": 1})
    with pytest.raises(InvalidEnvelope, match="'Bad'"):
        bus.publish_event(made)


# -- the bus ---------------------------------------------------------------------------------


def test_new_event_and_publish_take_extensions_subject_and_dataschema(bus: EventBus) -> None:
    event = bus.new_event(
        "order.placed", {"order_id": 1}, extensions={"tenant": "acme"}, subject="order/1",
        dataschema="urn:example:order-placed:1",
    )
    assert event.extensions == {"tenant": "acme"}
    assert (event.subject, event.dataschema) == ("order/1", "urn:example:order-placed:1")
    with capture_published(bus) as published:
        result = bus.publish("order.placed", {}, extensions={"tenant": "acme", "n": 1})
    assert published[0].extensions == {"tenant": "acme", "n": 1}
    assert result.event is published[0]
    with pytest.raises(InvalidEnvelope, match="'Tenant'"):
        bus.publish("order.placed", {}, extensions={"Tenant": "acme"})
    with pytest.raises(InvalidEnvelope, match="Pass correlation_id"):
        bus.new_event("order.placed", {}, extensions={"correlationid": "x"})


def test_an_event_published_by_a_handler_inherits_its_correlation_but_not_its_extensions(
    bus: EventBus,
) -> None:
    # (a trace context, a signature or a schema belongs to one event; middleware makes the
    # new event's own)
    made: list[Event] = []

    @bus.subscribe("order.placed")
    def follow(event: Event) -> None:
        made.append(bus.new_event("order.followed", {}))

    cause = Event.create(
        "order.placed", {}, source="shop", extensions={"traceparent": TRACEPARENT},
        subject="order/1",
    )
    [run] = HandlerRunner().run(bus, cause)
    assert run.status == "succeeded"
    [followed] = made
    assert (followed.correlation_id, followed.causation_id) == (cause.correlation_id, cause.id)
    assert followed.extensions == {} and followed.subject is None


def test_the_handler_runner_delivers_extensions_through_the_json_round_trip(bus: EventBus) -> None:
    seen: list[Event] = []
    bus.subscribe("order.#")(seen.append)
    sent = Event.create(
        "order.placed", {"é": "☃"}, source="shop", extensions={"tenant": "acme", "n": 3},
        dataschema="https://example.com/s.json",
    )
    [run] = HandlerRunner().run(bus, sent)
    assert run.status == "succeeded" and seen == [sent]
    assert seen[0].extensions == {"tenant": "acme", "n": 3}
    # And an envelope with an invalid extension dead-letters, as on a worker
    [bad] = HandlerRunner().run(bus, envelope(Tenant="acme"))
    assert (bad.status, bad.reason) == ("dead_lettered", "invalid_envelope")
    assert "'Tenant'" in str(bad.error)


# -- receiving -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("members", "rule"),
    [
        ({"Tenant": "acme"}, "The envelope's extension attribute name 'Tenant'"),
        ({"trace-parent": "x"}, "'trace-parent' is not valid"),
        ({"priority": 1.5}, "'priority' is a float"),
        ({"priority": 2**40}, "outside the CloudEvents Integer range"),
        ({"nested": {"a": 1}}, "'nested' is dict"),
        ({"list": [1]}, "'list' is list"),
        ({"text": "a\u0085b"}, "U\\+0085"),
        ({"datacontenttype": "text/plain"}, "datacontenttype is 'text/plain'"),
        ({"datacontenttype": 7}, "datacontenttype is 7"),
        ({"data_base64": "e30="}, "both data and data_base64"),
        ({"time": "2026-01-02T03:04:05"}, "has no UTC offset"),
        ({"time": "2026-01-02"}, "has no UTC offset"),
        ({"time": "2026-01-02T25:04:05Z"}, "not an RFC 3339 timestamp"),
        ({"time": "2026-13-02t03:04:05z"}, "not an RFC 3339 timestamp"),
        ({"time": "2026-01-02T03:04:05+25:00"}, "not an RFC 3339 timestamp"),
        ({"time": "2026-01-02t03:04:05+24:00"}, "not an RFC 3339 timestamp"),
        ({"time": "2026-01-02T03:04:60Z"}, "not an RFC 3339 timestamp"),
        ({"time": "2026-01-02T03:04:05\ud800Z"}, "not an RFC 3339 timestamp"),
    ],
)
def test_a_received_envelope_breaking_a_rule_is_invalid(members: dict[str, Any], rule: str) -> None:
    with pytest.raises(InvalidEnvelope, match=rule):
        Event.from_envelope(envelope(**members))


def test_a_received_extension_set_to_null_counts_as_not_set() -> None:
    # (the JSON format: "a null value MUST be treated as the equivalent of unset")
    event = Event.from_envelope(envelope(tenant=None, subject=None, dataschema=None, n=1))
    assert event.extensions == {"n": 1}
    assert event.subject is None and event.dataschema is None


@pytest.mark.parametrize(
    "content_type",
    [None, "application/json", "application/json; charset=utf-8", "text/json",
     "application/vnd.example+json", "APPLICATION/JSON"],
)
def test_any_json_media_type_or_none_is_accepted(content_type: str | None) -> None:
    members = {"datacontenttype": content_type}
    if content_type is None:
        members = {}
    wire = envelope(**members)
    if content_type is None:
        del wire["datacontenttype"]
    assert Event.from_envelope(wire).data == {"order_id": 7}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
        ("2026-01-02T03:04:05.123456Z", WHEN),
        ("2026-01-02T03:04:05.123456+00:00", WHEN),
        ("2026-01-02t03:04:05.1234567z", WHEN),
        ("2026-01-02 03:04:05.12345678Z", WHEN),
        ("2026-01-02T05:04:05.123456+02:00", WHEN),
        ("2026-01-01T22:04:05.5-05:00", datetime(2026, 1, 2, 3, 4, 5, 500000, tzinfo=timezone.utc)),
    ],
)
def test_time_is_read_in_every_rfc_3339_form(text: str, expected: datetime) -> None:
    time = Event.from_envelope(envelope(time=text)).time
    assert time == expected and time.utcoffset() is not None


def test_a_time_with_an_offset_keeps_it() -> None:
    here = timezone(timedelta(hours=2))
    event = Event.create("order.placed", {}, source="shop", time=WHEN.astimezone(here))
    wire = event.to_envelope()
    assert wire["time"] == "2026-01-02T05:04:05.123456+02:00"
    assert Event.from_envelope(wire).time.utcoffset() == timedelta(hours=2)


# -- the screen on a subscriber's event queue ------------------------------------------------

SCREEN_QUEUE = "events.extscreen"


@pytest.fixture(scope="module")
def screened_bus() -> Any:
    screened = EventBus(Celery("extscreen", broker="redis://127.0.0.1:1/0"), service="extscreen")
    screened.subscribe("order.#", name="probe")(lambda event: None)
    yield screened
    screened.close()


def queue_item(app: Celery, wire: dict[str, Any]) -> str:
    """A delivery of ``wire`` to extscreen.probe, byte for byte as the bus would publish it."""
    from celery_events._messages import build_messages, encode_body, redis_payload

    head = {k: v for k, v in wire.items() if k != "data"}
    [message] = build_messages(
        app, wire, encode_body(head, json.dumps(wire["data"])),
        [("extscreen.probe", SCREEN_QUEUE, "order.placed → extscreen.probe", "extscreen")],
        parent_id=None, root_id=None,
    )
    return redis_payload(message)


def test_the_screen_lets_extension_attributes_through_and_refuses_invalid_ones(
    screened_bus: EventBus,
) -> None:
    from celery_events.backends.redis.transport import Unreadable, screen

    wire = envelope(traceparent=TRACEPARENT, n=1, subject="order/7")
    screened = screen(SCREEN_QUEUE, queue_item(screened_bus.app, wire))
    assert screened.arguments[0][0] == wire  # type: ignore[attr-defined]

    bad = envelope(priority=1.5)
    with pytest.raises(Unreadable) as caught:
        screen(SCREEN_QUEUE, queue_item(screened_bus.app, bad))
    assert caught.value.reason == "invalid_envelope"
    assert caught.value.envelope == bad and "'priority' is a float" in str(caught.value)


# -- what is received can always be sent again -------------------------------------------------

_JSON_SCALARS = (
    st.none() | st.booleans() | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_MEMBER_NAMES = st.sampled_from(
    ["traceparent", "n", "Tenant", "a_b", "", "subject", "dataschema", "datacontenttype",
     "data_base64", "time", "causationid", "correlationid", "x" * 30, "é"]
) | st.text(alphabet="abcz09_-A", min_size=1, max_size=8)
_TIMES = st.sampled_from(
    ["2026-01-02T03:04:05Z", "2026-01-02t03:04:05.1234567z", "2026-01-02T03:04:05",
     "2026-01-02 03:04:05+02:00", "2026-01-02T03:04:05+25:00", "nonsense", "2026-02-30T00:00:00Z"]
)


@settings(max_examples=400, derandomize=True, database=None, deadline=None)
@given(
    members=st.dictionaries(_MEMBER_NAMES, _JSON, max_size=5),
    time=_TIMES | st.text(max_size=12),
)
def test_an_envelope_is_read_or_refused_and_what_is_read_can_be_published_as_it_is(
    members: dict[str, Any], time: str
) -> None:
    received = envelope(**{"time": time, **members})
    try:
        event = Event.from_envelope(received)
    except InvalidEnvelope:
        return
    # Whatever a subscriber accepts passes the publisher's checks, so a replay, a relay or a
    # bridge can send it on, and it reads back the same.
    event.validate()
    assert Event.from_envelope(json.loads(json.dumps(event.to_envelope()))) == event
    assert all(value is not None for value in event.extensions.values())
