"""Sensitive fields on RabbitMQ: the one message a publish sends holds the field encrypted and
its argument text masked; the worker decrypts it for the handler, and its retry (through the
retry exchange) keeps both."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from kombu import Connection

from celery_events import EventBus
from celery_events.trust.sensitive import MASK, write_aes_key

from ...harness import Worker, wait_until
from .conftest import Rabbit, records

EMAIL = "grace@example.org"


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    directory.mkdir()
    write_aes_key(directory, "20261201-k")
    return directory


@pytest.fixture
def sender(rabbit: Rabbit, keys: Path) -> Iterator[EventBus]:
    bus = EventBus(
        Celery("shop", broker=rabbit.url), service="shop", registry_url=rabbit.state_url,
        encryption_keys=str(keys),
    )
    bus.declare("shop.signup", sensitive=["email"])
    yield bus
    bus.close()


def test_the_published_message_is_encrypted_and_masked_and_the_handler_gets_the_value(
    rabbit: Rabbit,
    sender: EventBus,
    start_rabbit_worker: Callable[..., Worker],
    redis_client: redis.Redis,
    keys: Path,
) -> None:
    # Given a subscriber whose queues exist, its worker stopped
    start_rabbit_worker(RABBIT_SERVICE="alpha", RABBIT_KEYS=str(keys)).stop()
    # When an event with a sensitive field is published, its handler failing once
    (delivery,) = [
        d for d in sender.publish("shop.signup", {"email": EMAIL, "fail": 1}).deliveries
        if d.handler == "alpha.seen"
    ]
    # Then the message on the handler's queue has the field encrypted and masked
    with Connection(rabbit.url) as connection:
        channel = connection.channel()
        message = wait_until(lambda: channel.basic_get("events.alpha.seen"), what="the message")
        body, headers = message.body, message.headers
        channel.basic_reject(message.delivery_tag, requeue=True)
    raw = body if isinstance(body, bytes) else body.encode()
    assert EMAIL.encode() not in raw and b"enc:v1:20261201-k:" in raw
    assert EMAIL not in headers["argsrepr"] and f"'email': '{MASK}'" in headers["argsrepr"]
    assert EMAIL not in base64.b64encode(raw).decode()  # (nor in any encoding of the body)
    # When the worker runs it, Then the handler gets the clear value after its retry
    worker = start_rabbit_worker(RABBIT_SERVICE="alpha", RABBIT_KEYS=str(keys))
    [effect] = wait_until(
        lambda: [e for e in records(redis_client, "test:effects") if e["handler"] == "alpha.seen"],
        timeout=30, what="the handler's effect",
    )
    assert effect["email"] == hashlib.sha256(EMAIL.encode()).hexdigest()
    runs = [r for r in records(redis_client, "test:runs") if r["handler"] == "alpha.seen"]
    assert [r["retries"] for r in runs] == [0, 1] and runs[1]["exchange"] == "celery_events.retry"
    assert effect["task_id"] == delivery.task_id and EMAIL not in worker.log()
    assert json.dumps(effect).count("@") == 0
