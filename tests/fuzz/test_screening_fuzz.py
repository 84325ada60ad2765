"""Property-based fuzzing of the two screening surfaces, against one real worker.

Each example pushes one generated item straight onto the ``screened`` service's queue with
LPUSH, followed by a valid delivery, and waits until the item was either handled (the handler
records every event it gets) or is a dead letter, and the valid delivery was handled: whatever
the item, the worker is alive, handles the next event, and never runs the canary task of its
app from an event queue. The seed is fixed (``derandomize``) and the example count bounded, so
CI runs the same examples each time in well under a minute.

- queue items: a valid delivery with one field (a header, a property, a top-level key, the
  body or a part of it) replaced by generated JSON, or removed;
- envelopes: a valid delivery whose envelope is generated, or has one attribute replaced.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_events import EventBus

from ..harness import RedisServer, Worker, wait_until
from ..screening_items import (
    CANARY,
    CANARY_KEY,
    QUEUE,
    RECEIVED_KEY,
    Message,
    body_of,
    delivery,
    nested,
    with_body,
)

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("CELERY_EVENTS_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Values a hostile or broken peer would try, next to arbitrary JSON.
_PECULIAR = st.sampled_from(
    [
        {"__type__": "datetime", "__value__": "2020-01-01T00:00:00"},
        {"__type__": "bytes", "__value__": "aGk="},
        {"__type__": "nope", "__value__": 1},
        [CANARY],
        CANARY,
        "2999-01-01T00:00:00",
        "2001-01-01T00:00:00+00:00",
        "events.screened",
        "celery",
        "base64",
        "application/json",
        [None, None],
        [1, 2],
        nested(80),
        "",
        -1,
        10**30,
        1e308,
    ]
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON = st.recursive(
    _SCALARS | _PECULIAR,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)

_HEADERS = [
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
    "replaced_task_nesting", "stamped_headers", "stamps", "compression", "callbacks", "chain",
    "get", "x-trace",
]
_PROPERTIES = [
    "correlation_id", "reply_to", "delivery_mode", "delivery_info", "priority",
    "body_encoding", "delivery_tag", "x-extra",
]
_TOP = ["body", "content-encoding", "content-type", "headers", "properties"]
_BODY = ["args", "kwargs", "embed", "callbacks", "errbacks", "chain", "chord", "whole"]
_ENVELOPE = [
    "specversion", "id", "type", "source", "time", "datacontenttype", "data", "subject",
    "correlationid", "causationid", "extra",
]

_MISSING = object()


@dataclass
class Fuzzed:
    """A running worker of the ``screened`` service, and what it can be asked."""

    client: redis.Redis
    ops: EventBus
    app: Celery
    worker: Worker

    def received_ids(self) -> set[str]:
        return {json.loads(r)["id"] for r in self.client.lrange(RECEIVED_KEY, 0, -1)}

    def letters(self) -> tuple[set[bytes], set[str]]:
        """Raw bytes and task ids of the dead letters so far."""
        letters = self.ops.dead_letters.list(limit=None)
        return (
            {letter.raw for letter in letters if letter.raw is not None},
            {letter.task_id for letter in letters if letter.task_id},
        )

    def check(self, item: bytes, event_id: object, task_id: object) -> None:
        """Push ``item`` and a valid delivery after it; both must be settled, the worker up."""
        canary = delivery(self.app, {"canary": True})
        self.client.lpush(QUEUE, item, json.dumps(canary))
        next_id = body_of(canary)[0][0]["id"]

        def settled() -> bool:
            if self.worker.process.poll() is not None:
                raise AssertionError(f"the worker died on {item[:300]!r}:\n{self.worker.log()[-3000:]}")
            got = self.received_ids()
            if next_id not in got:
                return False
            if isinstance(event_id, str) and event_id in got:
                return True
            raws, task_ids = self.letters()
            return item in raws or (isinstance(task_id, str) and task_id in task_ids)

        wait_until(settled, timeout=20, interval=0.02, what=f"{item[:200]!r} settled")
        assert self.client.llen(CANARY_KEY) == 0, f"the canary ran after {item[:300]!r}"


@pytest.fixture(scope="module")
def fuzzed(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fuzzed]:
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    env = dict(os.environ, CELERY_EVENTS_TEST_BROKER=redis_server.url)
    worker = Worker(
        "tests.services.screened",
        env,
        ["--without-mingle", "--without-gossip", "-c", "1"],
        tmp_path_factory.mktemp("fuzz"),
    ).wait_ready()
    app = Celery("shop", broker=redis_server.url)
    ops = EventBus(Celery("screened-ops", broker=redis_server.url), service="screened")
    yield Fuzzed(client=client, ops=ops, app=app, worker=worker)
    ops.close()
    alive = worker.process.poll() is None
    worker.stop()
    assert alive, worker.log()[-3000:]


def _replace(container: dict[str, Any], key: str, value: object) -> None:
    if value is _MISSING:
        container.pop(key, None)
    else:
        container[key] = value


def _ids(message: Message) -> tuple[object, object]:
    headers = message.get("headers")
    task_id = headers.get("id") if isinstance(headers, dict) else None
    try:
        event_id = body_of(message)[0][0].get("id")
    except Exception:
        event_id = None
    return event_id, task_id


VALUES = JSON | st.just(_MISSING)


@FUZZ
@given(
    where=st.sampled_from(
        [("headers", k) for k in _HEADERS]
        + [("properties", k) for k in _PROPERTIES]
        + [("top", k) for k in _TOP]
        + [("body", k) for k in _BODY]
    ),
    value=VALUES,
)
def test_any_queue_item_is_handled_or_dead_lettered(
    fuzzed: Fuzzed, where: tuple[str, str], value: object
) -> None:
    message = delivery(fuzzed.app, {"n": 1})
    event_id, task_id = _ids(message)
    part, key = where
    if part == "headers":
        _replace(message["headers"], key, value)
    elif part == "properties":
        _replace(message["properties"], key, value)
    elif part == "top":
        _replace(message, key, value)
    else:
        parts: list[Any] = body_of(message)
        body: object = parts
        if key == "whole":
            body = None if value is _MISSING else value
        elif key in ("args", "kwargs", "embed"):
            index = ("args", "kwargs", "embed").index(key)
            if value is _MISSING:
                del parts[index]
            else:
                parts[index] = value
        else:
            _replace(parts[2], key, value)
        message = with_body(message, body)
    fuzzed.check(json.dumps(message).encode(), event_id, _ids(message)[1] or task_id)


@FUZZ
@given(
    key=st.sampled_from(_ENVELOPE + ["whole"]),
    value=VALUES,
)
def test_any_envelope_is_handled_or_dead_lettered(
    fuzzed: Fuzzed, key: str, value: object
) -> None:
    message = delivery(fuzzed.app, {"n": 1})
    args, kwargs, embed = body_of(message)
    envelope: object = copy.deepcopy(args[0])
    if key == "whole":
        envelope = None if value is _MISSING else value
    else:
        assert isinstance(envelope, dict)
        _replace(envelope, key, value)
    message = with_body(message, [[envelope], kwargs, embed])
    event_id = envelope.get("id") if isinstance(envelope, dict) else None
    item = json.dumps(message).encode()
    fuzzed.check(item, event_id, message["headers"]["id"])
