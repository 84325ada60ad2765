"""The screen, item by item, without a server: what it refuses and what it lets through."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from celery import Celery

from celery_events import Event, EventBus
from celery_events._messages import _redis_payload_from_dicts, build_messages, encode_body
from celery_events.backends.redis.transport import ScreenedPayload, Unreadable, screen

from ..screening_items import BAD_ITEMS, QUEUE, body_of, delivery, with_body, with_header


@pytest.fixture(scope="module")
def bus() -> Iterator[EventBus]:
    bus = EventBus(
        Celery("screened", broker="redis://127.0.0.1:1/0"),
        service="screened",
        max_event_size=64 * 1024,
        max_event_depth=16,
        retry_backoff_max=0.5,
        handler_time_limit=30,
    )

    @bus.subscribe("probe.#")
    def probe(event: Event) -> None:
        """Never runs here."""

    yield bus
    bus.close()


@pytest.mark.parametrize("name", sorted(BAD_ITEMS))
def test_each_bad_item_is_refused(bus: EventBus, name: str) -> None:
    item = json.dumps(BAD_ITEMS[name](delivery(bus.app))).encode()
    with pytest.raises(Unreadable):
        screen(QUEUE, item)


def test_a_published_delivery_passes_with_its_body_decoded_as_plain_json(bus: EventBus) -> None:
    data = {"when": {"__type__": "datetime", "__value__": "2020-01-01T00:00:00"}}
    message = delivery(bus.app, data)
    screened = screen(QUEUE, json.dumps(message))
    assert isinstance(screened, ScreenedPayload)
    assert screened == message
    assert screened.arguments[0][0]["data"] == data


def test_what_before_task_publish_receivers_and_retries_add_passes(bus: EventBus) -> None:
    event = Event.create("probe.item", {"n": 1}, source="test")
    envelope = event.to_envelope()
    head = {k: v for k, v in envelope.items() if k != "data"}
    [built] = build_messages(
        bus.app, envelope, encode_body(head, '{"n": 1}'),
        [("screened.probe", QUEUE, "probe.item → screened.probe", "screened")],
        parent_id=None, root_id=None,
    )
    # A tracing receiver's header, and what Celery's Task.retry sets: retries and an eta.
    built.headers.update(
        {"x-trace": {"span": "1"}, "retries": 2, "eta": (datetime.now(timezone.utc)
                                                          + timedelta(seconds=0.5)).isoformat()}
    )
    assert screen(QUEUE, _redis_payload_from_dicts(built))["headers"]["retries"] == 2


def test_the_deepest_data_allowed_passes_and_one_level_more_does_not(bus: EventBus) -> None:
    def deep(levels: int) -> object:
        value: object = {}
        for _ in range(levels - 1):
            value = {"x": value}
        return value

    assert screen(QUEUE, json.dumps(delivery(bus.app, data_json=json.dumps(deep(16)))))
    with pytest.raises(Unreadable, match="max_event_depth"):
        screen(QUEUE, json.dumps(delivery(bus.app, data_json=json.dumps(deep(17)))))


def test_an_invalid_envelope_is_refused_with_the_envelope_kept(bus: EventBus) -> None:
    message = delivery(bus.app)
    [[envelope], kwargs, embed] = body_of(message)
    envelope["type"] = "Not A Name"
    with pytest.raises(Unreadable) as caught:
        screen(QUEUE, json.dumps(with_body(message, [[envelope], kwargs, embed])))
    assert caught.value.reason == "invalid_envelope"
    assert caught.value.envelope == envelope
    assert caught.value.handler == "screened.probe"


def test_other_queues_get_only_the_checks_that_keep_the_worker_up(bus: EventBus) -> None:
    message = delivery(bus.app)
    message["headers"]["task"] = "users.task"
    message["properties"]["delivery_info"]["routing_key"] = "celery"
    message = with_body(message, [[1], {"a": 1}, {"chain": None}])
    assert screen("celery", json.dumps(message)) == message
    with pytest.raises(Unreadable, match="'id'"):
        screen("celery", json.dumps(with_header(message, "id", {"a": 1})))
    with pytest.raises(Unreadable, match="unreadable body"):
        screen("celery", json.dumps(with_body(message, [[{"__type__": "nope", "__value__": 1}],
                                                         {}, None])))
