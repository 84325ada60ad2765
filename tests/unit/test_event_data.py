"""What publish accepts: data every subscriber can take, and ids every subscriber can read.

Each rule is checked in the publisher, so bad input raises a typed error in the caller and is
never sent (the inputs are the ones from issue 10).
"""

from __future__ import annotations

import re
import sys
from datetime import datetime, timezone
from typing import Any

import pytest

from celery_events import Event, InvalidEnvelope, InvalidEventData, InvalidEventName
from celery_events._plainjson import depth_exceeds, find_problem
from celery_events.envelope import encode_data


def nested(levels: int) -> dict[str, Any]:
    """``{"a": {"a": ... {}}}``, ``levels`` objects deep (``{}`` is one level)."""
    data: dict[str, Any] = {}
    for _ in range(levels - 1):
        data = {"a": data}
    return data


# -- nesting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [65, 500, 10_000, 100_000])
def test_data_nested_deeper_than_the_limit_is_refused_naming_the_path_and_the_fix(
    levels: int,
) -> None:
    # Given data nested deeper than max_event_depth (500 levels is about 3 KB of JSON; 10,000
    # levels used to raise an untyped RecursionError from json.dumps)
    data = nested(levels)

    # When it is encoded, Then a typed error names the depth, where, and what to do
    with pytest.raises(InvalidEventData) as caught:
        encode_data("user.registered", data, 10**7, 64)
    message = str(caught.value)
    assert "more than 64 levels deep" in message
    assert 'data["a"]["a"]' in message and "level 65" in message
    assert "max_event_depth" in message
    assert len(message) < 400


def test_data_exactly_at_the_limit_is_accepted() -> None:
    assert encode_data("user.registered", nested(64), 10**6, 64).startswith('{"a": {"a":')
    assert encode_data("user.registered", {}, 10**6, 1) == "{}"
    with pytest.raises(InvalidEventData, match="more than 1 levels deep"):
        encode_data("user.registered", {"a": []}, 10**6, 1)


def test_lists_count_as_levels_and_the_path_names_their_indexes() -> None:
    data: dict[str, Any] = {"items": [1, 2, 3, [[[]]]]}
    with pytest.raises(InvalidEventData, match=r'data\["items"\]\[3\]\[0\] is level 4'):
        encode_data("order.created", data, 10**6, 3)


def test_the_depth_limit_does_not_depend_on_the_interpreters_recursion_limit() -> None:
    # Given a recursion limit far below the data's depth
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(200)
    try:
        # Then the walk (iterative) still works and the typed error still comes out
        with pytest.raises(InvalidEventData, match="levels deep"):
            encode_data("user.registered", nested(5_000), 10**7, 64)
    finally:
        sys.setrecursionlimit(old)


def test_data_that_holds_itself_is_refused_as_a_cycle() -> None:
    data: dict[str, Any] = {"a": [1]}
    data["a"].append(data)
    with pytest.raises(InvalidEventData, match=r'contains itself: data\["a"\]\[1\]'):
        encode_data("user.registered", data, 10**6, 64)


def test_depth_exceeds_uses_the_same_walk() -> None:
    assert not depth_exceeds(nested(64), 64)
    assert depth_exceeds(nested(65), 64)
    assert depth_exceeds([[[]]], 2) and not depth_exceeds([[[]]], 3)
    assert not depth_exceeds("text", 1) and not depth_exceeds({1: "keys are not its job"}, 1)


# -- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key", "where"),
    [
        ({1: "x"}, "1 (int)", "in data;"),
        ({None: "x"}, "None (NoneType)", "in data;"),
        ({True: "x"}, "True (bool)", "in data;"),
        ({1.5: "x"}, "1.5 (float)", "in data;"),
        ({1: "x", "1": "y"}, "1 (int)", "in data;"),
        ({"order": {"lines": [{"sku": "a"}, {7: "b"}]}}, "7 (int)", 'in data["order"]["lines"][1];'),
    ],
)
def test_keys_that_are_not_strings_are_refused_not_turned_into_strings(
    data: dict[Any, Any], key: str, where: str
) -> None:
    # Given data with a key JSON would silently turn into a string ({1: "x", "1": "y"} would
    # lose a value)
    # When it is encoded, Then a typed error names the key and where it is
    with pytest.raises(InvalidEventData) as caught:
        encode_data("user.registered", data, 10**6, 64)
    assert f"has the key {key} {where}" in str(caught.value)
    assert "Use a string key" in str(caught.value)


def test_a_str_subclass_key_is_a_string() -> None:
    class Name(str):
        pass

    assert encode_data("user.registered", {Name("a"): 1}, 10**6, 64) == '{"a": 1}'


# -- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"when": datetime(2026, 1, 1)}, 'at data["when"]'),
        ({"x": [1, float("nan")]}, 'at data["x"][1]'),
        ({"x": {"y": float("inf")}}, 'at data["x"]["y"]'),
        ({"s": {1, 2}}, 'at data["s"]'),
    ],
)
def test_a_value_json_cannot_encode_is_named_by_its_path(data: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidEventData) as caught:
        encode_data("user.registered", data, 10**6, 64)
    assert f"cannot be encoded as JSON {where}:" in str(caught.value)


def test_find_problem_reports_the_kind_path_and_culprit() -> None:
    problem = find_problem({"a": [1, {2: "b"}]}, 64, keys=True)
    assert problem is not None
    assert (problem.kind, problem.path, problem.culprit) == ("key", '["a"][1]', 2)
    assert find_problem({"a": [1, {2: "b"}]}, 64) is None  # keys only when asked


# -- ids and the event's other attributes ------------------------------------------------------


@pytest.mark.parametrize("bad", [5, 0, False, True, ["id"], {"id": 1}, b"bytes"])
@pytest.mark.parametrize("attribute", ["correlation_id", "causation_id", "id"])
def test_event_create_refuses_ids_that_are_not_strings(attribute: str, bad: object) -> None:
    # 0 and False used to be replaced silently (``correlation_id or event_id``); the others
    # were sent and every subscriber dead-lettered them
    with pytest.raises(InvalidEnvelope, match=re.escape(f"{attribute} must be a string, not {bad!r}")):
        Event.create("user.registered", {}, source="users", **{attribute: bad})  # type: ignore[arg-type]


def test_event_create_keeps_string_ids_and_treats_empty_ones_as_not_given() -> None:
    event = Event.create("user.registered", {}, source="users", correlation_id="c", causation_id="e")
    assert (event.correlation_id, event.causation_id) == ("c", "e")
    event = Event.create("user.registered", {}, source="users", id="", correlation_id="", causation_id="")
    assert event.id and event.correlation_id == event.id and event.causation_id is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"id": ""}, "id must be a non-empty string"),
        ({"id": 7}, r"id must be a non-empty string, not 7 \(int\)"),
        ({"source": None}, "source must be a non-empty string"),
        ({"source": ""}, "source must be a non-empty string"),
        ({"correlation_id": 5}, "correlation_id must be a non-empty string"),
        ({"correlation_id": None}, "correlation_id must be a non-empty string"),
        ({"causation_id": 5}, "causation_id must be the id"),
        ({"causation_id": ""}, "causation_id must be the id"),
        ({"time": datetime(2026, 1, 1)}, "timezone-aware datetime"),
        ({"time": "2026-01-01T00:00:00Z"}, "timezone-aware datetime"),
        ({"specversion": "0.3"}, "specversion is '0.3'"),
    ],
)
def test_a_user_made_event_that_could_not_be_sent_is_refused(
    changes: dict[str, Any], message: str
) -> None:
    good = dict(
        id="e1", name="user.registered", data={}, source="users",
        time=datetime(2026, 1, 1, tzinfo=timezone.utc), correlation_id="c1",
    )
    Event(**good).validate()  # type: ignore[arg-type]
    with pytest.raises(InvalidEnvelope, match=message):
        Event(**{**good, **changes}).validate()  # type: ignore[arg-type]


def test_validate_checks_the_name_too() -> None:
    event = Event("e1", "Not A Name", {}, "users", datetime.now(timezone.utc), "e1")
    with pytest.raises(InvalidEventName):
        event.validate()


def test_event_create_refuses_a_naive_time_and_a_bad_source() -> None:
    with pytest.raises(InvalidEnvelope, match="timezone-aware"):
        Event.create("user.registered", {}, source="users", time=datetime(2026, 1, 1))
    with pytest.raises(InvalidEnvelope, match="source must be a non-empty string"):
        Event.create("user.registered", {}, source=3)  # type: ignore[arg-type]


# -- through the bus: refused in the caller, before any broker is touched ---------------------


def unreachable_bus(**settings: Any) -> Any:
    from celery import Celery

    from celery_events import EventBus

    # Port 1: nothing listens there, so a publish that got as far as the broker would raise
    # PublishError instead of the errors asserted below.
    return EventBus(Celery("shop", broker="redis://127.0.0.1:1/0"), service="shop", **settings)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (nested(500), "more than 64 levels deep"),
        (nested(10_000), "more than 64 levels deep"),
        ({1: "x", "1": "y"}, "has the key 1 (int)"),
        ({None: "x"}, "has the key None"),
        ({True: "x"}, "has the key True"),
    ],
)
def test_publish_and_new_event_refuse_bad_data_in_the_caller(data: Any, message: str) -> None:
    bus = unreachable_bus()
    with pytest.raises(InvalidEventData, match=re.escape(message)):
        bus.publish("user.registered", data)
    with pytest.raises(InvalidEventData, match=re.escape(message)):
        bus.new_event("user.registered", data)


def test_the_bus_uses_its_max_event_depth_setting() -> None:
    bus = unreachable_bus(max_event_depth=3)
    assert bus.new_event("user.registered", nested(3)).data == nested(3)
    with pytest.raises(InvalidEventData, match="more than 3 levels deep"):
        bus.new_event("user.registered", nested(4))


@pytest.mark.parametrize("option", ["correlation_id", "causation_id"])
@pytest.mark.parametrize("bad", [5, 0, False, 1.5, ["c"]])
def test_publish_refuses_ids_that_are_not_strings(option: str, bad: object) -> None:
    bus = unreachable_bus()
    with pytest.raises(InvalidEnvelope, match=f"{option} must be a string"):
        bus.publish("user.registered", {}, **{option: bad})
    with pytest.raises(InvalidEnvelope, match=f"{option} must be a string"):
        bus.new_event("user.registered", {}, **{option: bad})


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"correlation_id": 5}, InvalidEnvelope),
        ({"causation_id": 7}, InvalidEnvelope),
        ({"time": datetime(2026, 1, 1)}, InvalidEnvelope),
        ({"id": ""}, InvalidEnvelope),
        ({"data": nested(500)}, InvalidEventData),
        ({"data": {1: "x"}}, InvalidEventData),
        ({"name": "Bad Name"}, InvalidEventName),
    ],
)
def test_publish_event_refuses_a_user_made_event_subscribers_could_not_read(
    changes: dict[str, Any], error: type[Exception]
) -> None:
    bus = unreachable_bus()
    good = dict(
        id="e1", name="user.registered", data={}, source="shop",
        time=datetime(2026, 1, 1, tzinfo=timezone.utc), correlation_id="e1",
    )
    with pytest.raises(error):
        bus.publish_event(Event(**{**good, **changes}))  # type: ignore[arg-type]


def test_publish_event_takes_only_an_event() -> None:
    with pytest.raises(InvalidEnvelope, match="publish_event takes an Event"):
        unreachable_bus().publish_event({"type": "user.registered"})


# -- reading JSON typed by people (the CLI's --data) ------------------------------------------


def test_loads_can_refuse_a_key_given_twice_and_types_deep_nesting() -> None:
    from celery_events._plainjson import NestedTooDeep, loads

    assert loads('{"a": 1, "a": 2}') == {"a": 2}  # the wire decoder keeps JSON's rule
    with pytest.raises(ValueError, match="the key 'a' appears twice"):
        loads('{"b": {"a": 1, "a": 2}}', unique_keys=True)
    with pytest.raises(NestedTooDeep):
        loads("[" * 100_000 + "]" * 100_000, unique_keys=True)


def test_a_malformed_redis_url_is_a_configuration_error_without_the_password() -> None:
    from celery_events import ConfigurationError
    from celery_events.backends.redis.client import connect

    with pytest.raises(ConfigurationError, match="cannot be used: Port could not be cast") as caught:
        connect("redis://:s3cret@127.0.0.1:notaport/0", 1.0)
    assert "s3cret" not in str(caught.value)
