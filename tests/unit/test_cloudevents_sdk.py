"""Envelopes round-trip through the official CloudEvents Python SDK (``cloudevents`` on PyPI).

What the bus writes, the SDK reads with every attribute intact; what the SDK writes, the bus
reads and delivers unchanged. Both the SDK's current API (``cloudevents.core``: the JSON format
and the v1.0 event) and its compatibility layer (``cloudevents.v1``, the 1.x ``from_json`` /
``to_json``) are checked.

Where the two sides differ, and what the bus does about it:
- ``time``: the SDK's 2.x writer ends UTC times in ``Z``, its 1.x layer in ``+00:00``, and
  other SDKs write any RFC 3339 form; the bus reads them all (``Event.from_envelope``).
- ``datacontenttype``: the SDK leaves it out unless it is set; the bus reads an absent one as
  JSON and always writes ``application/json``.
- ``correlationid`` / ``causationid``: extensions to the SDK (``causationid`` is ``null`` for
  an event without cause, which the SDK keeps as ``None``); an SDK event without them starts
  its own correlation chain.
- ``specversion``: both sides accept ``1.0`` only.
- Extension values: the SDK does not check their types; the bus refuses what the spec does not
  allow (floats, objects, lists), as it refuses a ``type`` that is not an event name and data
  that is not a JSON object (``data_base64``).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery import Celery
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from cloudevents.v1.conversion import to_json as legacy_to_json
from cloudevents.v1.http import CloudEvent as LegacyCloudEvent
from cloudevents.v1.http import from_json as legacy_from_json

from celery_events import Event, EventBus, InvalidEnvelope
from celery_events._messages import encode_body
from celery_events.backends import memory
from celery_events.testing import HandlerRunner

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
UNICODE_DATA = {"name": "Zoë \"quoted\" ☃ 😀", "lines": ["a\nb", "\u2028"], "n": 1.5, "ok": None}


def ours(**options: Any) -> Event:
    return Event.create("order.placed", dict(UNICODE_DATA), source="shop", **options)


EVENTS = {
    "plain": lambda: ours(),
    "with extensions": lambda: ours(
        extensions={"traceparent": TRACEPARENT, "priority": 3, "sampled": True, "tenant": "åcme"}
    ),
    "with correlation and cause": lambda: ours(
        correlation_id="corr-1", causation_id="cause-1", extensions={"sig": "c2ln"}
    ),
    "with subject and dataschema": lambda: ours(
        subject="order/7", dataschema="https://schemas.example.com/order-placed/1.json"
    ),
    "at an offset, whole seconds": lambda: ours(
        time=datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone(timedelta(hours=-5)))
    ),
}


def wire_text(event: Event) -> str:
    """The envelope exactly as it is in a delivery's body: ``[[envelope], {}, {...}]``."""
    envelope = event.to_envelope()
    head = {k: v for k, v in envelope.items() if k != "data"}
    body = encode_body(head, json.dumps(envelope["data"]))
    _, end = json.JSONDecoder().raw_decode(body, 2)
    return body[2:end]


def assert_sdk_event_is(sdk: CloudEvent, event: Event) -> None:
    """Every attribute the SDK read is the event's."""
    attributes = dict(sdk.get_attributes())
    assert attributes.pop("specversion") == "1.0"
    assert attributes.pop("id") == event.id
    assert attributes.pop("type") == event.name
    assert attributes.pop("source") == event.source
    assert attributes.pop("time") == event.time
    assert attributes.pop("datacontenttype") == "application/json"
    assert attributes.pop("correlationid") == event.correlation_id
    assert attributes.pop("causationid") == event.causation_id
    assert attributes.pop("subject", None) == event.subject
    assert attributes.pop("dataschema", None) == event.dataschema
    assert attributes == dict(event.extensions)  # nothing else, nothing lost
    assert sdk.get_data() == event.data


@pytest.mark.parametrize("case", sorted(EVENTS))
def test_what_the_bus_writes_the_sdk_reads_with_every_attribute(case: str) -> None:
    event = EVENTS[case]()
    sdk = JSONFormat().read(None, wire_text(event))
    assert isinstance(sdk, CloudEvent)
    assert_sdk_event_is(sdk, event)
    for name, value in event.extensions.items():
        assert sdk.get_extension(name) == value


@pytest.mark.parametrize("case", sorted(EVENTS))
def test_what_the_bus_writes_the_sdks_1x_layer_reads_with_every_attribute(case: str) -> None:
    event = EVENTS[case]()
    legacy = legacy_from_json(wire_text(event))
    attributes = dict(legacy.get_attributes())
    # The 1.x layer keeps time as the text it read
    assert datetime.fromisoformat(attributes.pop("time").replace("Z", "+00:00")) == event.time
    assert attributes == {
        key: value for key, value in event.to_envelope().items() if key not in ("data", "time")
    }
    assert legacy.get_data() == event.data


def sdk_event(**attributes: Any) -> CloudEvent:
    base: dict[str, Any] = {"type": "order.placed", "source": "https://shop.example.com/orders"}
    return CloudEvent({**base, **attributes}, dict(UNICODE_DATA))


SDK_EVENTS = {
    "minimal": lambda: sdk_event(),
    "with extensions": lambda: sdk_event(
        traceparent=TRACEPARENT, tracestate="rojo=00f067aa0ba902b7", priority=3, sampled=False
    ),
    "with every optional attribute": lambda: sdk_event(
        id="evt-1",
        time=datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=timezone(timedelta(hours=2))),
        datacontenttype="application/json; charset=utf-8",
        subject="order/7",
        dataschema="https://schemas.example.com/order-placed/1.json",
        correlationid="corr-1",
        causationid="cause-1",
        tenant="acme",
    ),
}


def assert_event_is_sdk(event: Event, sdk: CloudEvent) -> None:
    attributes = dict(sdk.get_attributes())
    assert event.specversion == attributes.pop("specversion")
    assert event.id == attributes.pop("id")
    assert event.name == attributes.pop("type")
    assert event.source == attributes.pop("source")
    assert event.time == attributes.pop("time")
    attributes.pop("datacontenttype", None)  # JSON either way
    assert event.correlation_id == attributes.pop("correlationid", event.id)
    assert event.causation_id == attributes.pop("causationid", None)
    assert event.subject == attributes.pop("subject", None)
    assert event.dataschema == attributes.pop("dataschema", None)
    assert dict(event.extensions) == attributes
    assert event.data == sdk.get_data()


@pytest.mark.parametrize("case", sorted(SDK_EVENTS))
def test_what_the_sdk_writes_the_bus_reads_and_writes_back_unchanged(case: str) -> None:
    sdk = SDK_EVENTS[case]()
    event = Event.from_envelope(json.loads(JSONFormat().write(sdk)))
    assert_event_is_sdk(event, sdk)
    # And what the bus sends on, the SDK reads as the event it wrote
    again = JSONFormat().read(None, wire_text(event))
    assert_event_is_sdk(Event.from_envelope(json.loads(JSONFormat().write(again))), sdk)
    assert again.get_data() == sdk.get_data()


@pytest.mark.parametrize("case", sorted(SDK_EVENTS))
def test_what_the_sdks_1x_layer_writes_the_bus_reads(case: str) -> None:
    current = SDK_EVENTS[case]()
    legacy = LegacyCloudEvent(
        {k: v.isoformat() if isinstance(v, datetime) else v
         for k, v in current.get_attributes().items()},
        current.get_data(),
    )
    text = legacy_to_json(legacy)
    assert b'+00:00"' in text or b'+02:00"' in text  # (1.x writes offsets, never Z)
    assert_event_is_sdk(Event.from_envelope(json.loads(text)), current)


@pytest.mark.parametrize("case", sorted(SDK_EVENTS))
def test_an_event_the_sdk_wrote_reaches_a_handler_unchanged(case: str) -> None:
    # The memory backend: the delivery runs through the real delivery task in this process.
    bus = EventBus(Celery(f"sdk{len(case)}", broker="memory://"), service="sdkshop")
    seen: list[Event] = []
    bus.subscribe("order.placed", name="keep")(seen.append)
    sdk = SDK_EVENTS[case]()
    try:
        [run] = HandlerRunner().run(bus, json.loads(JSONFormat().write(sdk)))
    finally:
        bus.close()
        memory.reset()
    assert run.status == "succeeded"
    [event] = seen
    assert_event_is_sdk(event, sdk)


@pytest.mark.parametrize(
    ("attributes", "data", "rule"),
    [
        ({"priority": 1.5}, {}, "'priority' is a float"),
        ({"meta": "ok", "type": "com.Example.Order"}, {}, "type is invalid"),
        ({}, b"\x00\x01", "data must be a JSON object|lacks"),
        ({}, "text", "data must be a JSON object"),
        ({"datacontenttype": "text/plain"}, "text", "data must be a JSON object"),
    ],
)
def test_what_the_sdk_allows_but_the_bus_cannot_hold_is_an_invalid_envelope(
    attributes: dict[str, Any], data: object, rule: str
) -> None:
    base: dict[str, Any] = {"type": "order.placed", "source": "/shop"}
    sdk = CloudEvent({**base, **attributes}, data)  # type: ignore[arg-type]
    with pytest.raises(InvalidEnvelope, match=rule):
        Event.from_envelope(json.loads(JSONFormat().write(sdk)))
