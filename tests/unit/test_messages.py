"""The fast path's message pieces against Celery's own functions (no server needed)."""

from __future__ import annotations

import base64
import json
import random
import uuid
from typing import Any

import pytest
from celery import Celery
from celery.utils.saferepr import saferepr

from celery_events._messages import (
    MessageBuilder,
    SentEvents,
    _redis_payload_from_dicts,
    encode_body,
    fast_saferepr,
    new_ids,
    redis_payload,
)

WORDS = ["a", "it's", "é→ü", "line\nbreak", "tab\t", '"quoted"', "back\\slash", "", "x" * 40]


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["str", "int", "float", "bool", "none"] + (["dict", "list"] * 2 if depth < 5 else [])
    kind = rng.choice(kinds)
    if kind == "str":
        return rng.choice(WORDS) * rng.randint(1, 3)
    if kind == "int":
        return rng.choice([0, -1, 7, 2**70, rng.randint(-1000, 1000)])
    if kind == "float":
        return rng.choice([0.5, -1e-7, 1e16, 3.141592653589793, rng.random()])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(WORDS) + str(i): random_json(rng, depth + 1) for i in range(rng.randint(0, 4))}


@pytest.mark.parametrize("maxlevels", [0, 1, 3, 5])
@pytest.mark.parametrize("maxlen", [None, 40, 200, 1024])
def test_fast_saferepr_is_celerys_saferepr_for_json_values(maxlen: int | None, maxlevels: int) -> None:
    rng = random.Random(f"{maxlen}-{maxlevels}")
    for _ in range(300):
        value = [random_json(rng)]
        assert fast_saferepr(value, maxlen, maxlevels) == saferepr(value, maxlen, maxlevels=maxlevels)


def test_fast_saferepr_at_the_length_limit() -> None:
    # Strings that make the repr exactly maxlen - 1, maxlen and maxlen + 1 characters long.
    for size in range(1010, 1030):
        value = [{"k": "y" * size}]
        assert fast_saferepr(value, 1024, 3) == saferepr(value, 1024, maxlevels=3)


def test_fast_saferepr_hands_other_types_to_celery() -> None:
    values = [[(1, 2)], [{1: "int key"}], [{"s": {1, 2}}], [b"bytes"], [uuid.UUID(int=5)]]
    for value in values:
        assert fast_saferepr(value, 1024, 3) == saferepr(value, 1024, maxlevels=3)


def test_new_ids_are_distinct_uuid4_strings() -> None:
    ids = new_ids(1000)
    assert len(set(ids)) == 1000
    for text in ids[:50]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_encode_body_is_json_dumps_of_the_protocol_2_body() -> None:
    envelope = {"id": "e1", "type": "a.b", "data": {"x": [1, "→"]}}
    head = {k: v for k, v in envelope.items() if k != "data"}
    body = encode_body(head, json.dumps(envelope["data"]))
    expected = [[envelope], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    assert body == json.dumps(expected)


@pytest.mark.parametrize("parent", [None, "p-1"])
def test_the_templated_payload_is_the_json_of_the_message_dicts(parent: str | None) -> None:
    # Given messages for three targets, one with a shown name that needs escaping
    app = Celery("shop", broker="redis://127.0.0.1:1/0")
    envelope = {"id": "e1", "type": "a.b", "data": {"q": "it's \"x\""}}
    body = json.dumps([[envelope], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    targets = [
        ("o.h", "events.o", "a.b → o.h", "o"),
        ("m.h", 'q"uote', "x", "m"),
        ("z.h", "events.z", "z", "z"),
    ]
    messages = MessageBuilder(app).build(
        envelope, body, targets, parent_id=parent, root_id="r-1" if parent else None
    )

    for message in messages:
        # When the payload is assembled from pieces, and from the dicts signals would see
        fast = redis_payload(message)
        message.headers  # noqa: B018  (materialises the dicts)
        slow = _redis_payload_from_dicts(message)
        # Then both are the same bytes, and the same as redis_payload with dicts present
        assert fast == slow == redis_payload(message)
        decoded = json.loads(fast)
        assert decoded["headers"]["root_id"] == ("r-1" if parent else message.task_id)
        assert decoded["properties"]["delivery_info"]["routing_key"] == message.queue
    assert len({m.task_id for m in messages}) == 3


@pytest.mark.parametrize("parent", [None, "p-1"])
def test_task_sent_event_payloads_are_the_json_of_celerys_event(parent: str | None) -> None:
    # Given messages of one event for two targets
    app = Celery("shop", broker="redis://127.0.0.1:1/0")
    envelope = {"id": "e1", "type": "a.b", "data": {"q": "it's"}}
    body = json.dumps([[envelope], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    targets = [("o.h", "events.o", "a.b → o.h", "o"), ("m.h", "events.m", "a.b → m.h", "m")]
    messages = MessageBuilder(app).build(
        envelope, body, targets, parent_id=parent, root_id="r-1" if parent else None
    )
    events = SentEvents(app, db=3)

    # When their task-sent events are assembled
    payload = events.payload(messages)

    # Then they are one message on the task.multi channel, as Celery's dispatcher sends a
    # group, whose body is the list of the events Celery's dispatcher would make (with args
    # and kwargs last, and spaces that pad the pieces every delivery shares to 3 bytes)
    assert events.channel == "/3.celeryev/task.sent"
    assert events.multi_channel == "/3.celeryev/task.multi"
    wrapper = json.loads(payload)
    body = json.loads(base64.b64decode(wrapper["body"]))
    assert isinstance(body, list) and len(body) == 2
    clocks = []
    for message, event in zip(messages, body, strict=True):
        clocks.append(event["clock"])
        expected = events.event(message, event["clock"], event["timestamp"])
        assert event == expected
        assert event["uuid"] == message.task_id and event["name"] == message.shadow
    reference = json.loads(events.wrap(body[0], messages[0].delivery_tag))
    reference["properties"]["delivery_info"]["routing_key"] = "task.multi"
    assert {**wrapper, "body": ""} == {**reference, "body": ""}
    assert clocks[1] == clocks[0] + 1
