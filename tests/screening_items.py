"""Queue items for the screening tests: valid deliveries of the `screened` service, taken apart.

A delivery is built byte for byte as the bus publishes it; each bad item replaces one field of
it. Nothing here talks to Redis: the tests push the items with LPUSH, as a hostile or broken
peer would.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from typing import Any

from celery import Celery

from celery_events._messages import build_messages, encode_body, redis_payload
from celery_events.envelope import Event

QUEUE = "events.screened"
#: What the `screened` service's handler received, and whether its canary task ever ran.
RECEIVED_KEY = "test:screened:received"
CANARY_KEY = "test:screened:canary"
HANDLER = "screened.probe"
CANARY = {
    "task": "screened.canary",
    "args": [],
    "kwargs": {},
    "options": {},
    "subtask_type": None,
    "immutable": False,
}

Message = dict[str, Any]


def delivery(app: Celery, data: object = None, *, data_json: str | None = None) -> Message:
    """A valid delivery of a ``probe.item`` event to ``screened.probe``, as a dict."""
    event = Event.create("probe.item", {} if data is None else data, source="test")
    envelope = event.to_envelope()
    head = {k: v for k, v in envelope.items() if k != "data"}
    text = data_json if data_json is not None else json.dumps(envelope["data"])
    [message] = build_messages(
        app,
        envelope,
        encode_body(head, text),
        [(HANDLER, QUEUE, f"probe.item → {HANDLER}", "screened")],
        parent_id=None,
        root_id=None,
    )
    result: Message = json.loads(redis_payload(message))
    return result


def body_of(message: Message) -> list[Any]:
    decoded: list[Any] = json.loads(base64.b64decode(message["body"]))
    return decoded


def with_body(message: Message, body: object) -> Message:
    return with_raw_body(message, json.dumps(body))


def with_raw_body(message: Message, text: str) -> Message:
    changed = copy.deepcopy(message)
    changed["body"] = base64.b64encode(text.encode()).decode()
    return changed


def with_header(message: Message, key: str, value: object) -> Message:
    changed = copy.deepcopy(message)
    changed["headers"][key] = value
    return changed


def without_header(message: Message, key: str) -> Message:
    changed = copy.deepcopy(message)
    del changed["headers"][key]
    return changed


def with_property(message: Message, key: str, value: object) -> Message:
    changed = copy.deepcopy(message)
    changed["properties"][key] = value
    return changed


def without_property(message: Message, key: str) -> Message:
    changed = copy.deepcopy(message)
    del changed["properties"][key]
    return changed


def with_embed(message: Message, embed: object) -> Message:
    args, kwargs, _ = body_of(message)
    return with_body(message, [args, kwargs, embed])


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


#: Every class of bad item: name → how to make it from a valid delivery.
BAD_ITEMS: dict[str, Callable[[Message], Message]] = {
    "id is a dict": lambda m: with_header(m, "id", {"a": 1}),
    "id is missing": lambda m: without_header(m, "id"),
    "task is a list": lambda m: with_header(m, "task", ["screened.probe"]),
    "timelimit is a string": lambda m: with_header(m, "timelimit", "soon"),
    "timelimit is not a pair": lambda m: with_header(m, "timelimit", [1, 2, 3]),
    "timelimit holds a string": lambda m: with_header(m, "timelimit", ["1", None]),
    "eta is a number": lambda m: with_header(m, "eta", 12),
    "eta is not ISO": lambda m: with_header(m, "eta", "next tuesday"),
    "eta is years ahead": lambda m: with_header(m, "eta", "2999-01-01T00:00:00+00:00"),
    "expires is a dict": lambda m: with_header(m, "expires", {}),
    "expires is in the past": lambda m: with_header(m, "expires", "2001-01-01T00:00:00+00:00"),
    "retries is a string": lambda m: with_header(m, "retries", "3"),
    "header shadows the request": lambda m: with_header(m, "update", 1),
    "chain in the headers": lambda m: with_header(m, "chain", [CANARY]),
    "compressed": lambda m: with_header(m, "compression", "application/x-gzip"),
    "delivery_info is missing": lambda m: without_property(m, "delivery_info"),
    "delivery_info is a string": lambda m: with_property(m, "delivery_info", "x"),
    "delivery_info has no routing key": lambda m: with_property(m, "delivery_info", {}),
    "routed to another queue": lambda m: with_property(
        m, "delivery_info", {"exchange": "", "routing_key": "celery"}
    ),
    "delivery_tag is a number": lambda m: with_property(m, "delivery_tag", 7),
    "unknown body_encoding": lambda m: with_property(m, "body_encoding", "rot13"),
    "body is not base64": lambda m: dict(m, body="%%%"),
    "embed is a string": lambda m: with_embed(m, "x"),
    "embed is a list": lambda m: with_embed(m, [1]),
    "embed has other options": lambda m: with_embed(m, {"reply_to": "x"}),
    "kwargs": lambda m: with_body(m, [body_of(m)[0], {"x": 1}, body_of(m)[2]]),
    "two args": lambda m: with_body(m, [body_of(m)[0] * 2, {}, body_of(m)[2]]),
    "callbacks": lambda m: with_embed(m, {"callbacks": [CANARY]}),
    "errbacks": lambda m: with_embed(m, {"errbacks": [CANARY]}),
    "chain": lambda m: with_embed(m, {"chain": [CANARY]}),
    "chord": lambda m: with_embed(m, {"chord": CANARY}),
    "data 500 levels deep": lambda m: with_body(
        m, [[dict(body_of(m)[0][0], data=nested(500))], {}, body_of(m)[2]]
    ),
    "body nested 10,000 levels": lambda m: with_raw_body(m, "[" * 10_000 + "]" * 10_000),
    "envelope over max_event_size": lambda m: with_body(
        m, [[dict(body_of(m)[0][0], data={"x": "y" * 200_000})], {}, body_of(m)[2]]
    ),
}
