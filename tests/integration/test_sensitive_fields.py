"""Sensitive fields with real workers, a real Redis and a real Flower: encrypted in every byte
Redis holds (queue, retries, dead letters), masked in Flower and in the worker's log, clear for
the handler; keys rotate; a changed ciphertext is dead-lettered ``undecryptable``."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celery_events import Event, EventBus
from celery_events.deadletters import Reason
from celery_events.trust.sensitive import MASK, EncryptionKeys, write_aes_key

from ..flower_harness import Flower
from ..harness import wait_until
from ..services._effects import EFFECTS_KEY

MEMBERS = "tests.services.members"
EMAIL = "ada@example.org"
STREET = "12 Analytical Row"
PHONE = "+44 20 7946 0958"
OLD, NEW = "20260101-old", "20261201-new"


def digest(value: object) -> str:
    """What tests/services/members.py records of each value its handlers get."""
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    directory.mkdir()
    write_aes_key(directory, OLD)
    write_aes_key(directory, NEW)
    return directory


@pytest.fixture
def flower(redis_url: str, tmp_path: Path) -> Iterator[Flower]:
    env = dict(os.environ, CELERY_EVENTS_TEST_BROKER=redis_url)
    server = Flower(MEMBERS, env, tmp_path, ["--enable_events=False"])
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def shop(redis_url: str, keys: object, key_id: str | None = None) -> EventBus:
    bus = EventBus(
        Celery("shop", broker=redis_url), service="shop",
        encryption_keys=keys, encryption_key_id=key_id,
    )
    bus.declare("user.registered", sensitive=["email", "address.street"])
    bus.declare("user.deleted", sensitive=["email"])
    return bus


@pytest.fixture
def publisher(redis_url: str, keys: Path) -> Iterator[EventBus]:
    bus = shop(redis_url, str(keys))
    yield bus
    bus.close()


def redis_text(client: redis.Redis) -> str:
    """Everything Redis holds, as text, with every base64 message body decoded too."""
    parts: list[bytes] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"string":
            parts.append(client.get(key) or b"")
        elif kind == b"list":
            parts.extend(client.lrange(key, 0, -1))
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                parts += [field, value]
        elif kind == b"zset":
            parts.extend(client.zrange(key, 0, -1))
        elif kind == b"set":
            parts.extend(client.smembers(key))
    text = "\n".join(p.decode(errors="replace") for p in parts)
    decoded = []
    for part in parts:
        try:
            item = json.loads(part)
        except ValueError:
            continue
        if isinstance(item, dict) and isinstance(item.get("body"), str):
            decoded.append(base64.b64decode(item["body"]).decode(errors="replace"))
    return text + "\n" + "\n".join(decoded)


def effects(client: redis.Redis, handler: str) -> list[dict[str, Any]]:
    found = [json.loads(raw) for raw in client.lrange(EFFECTS_KEY, 0, -1)]
    return [e for e in found if e["handler"] == handler]


def flower_task(flower: Flower, task_id: str, state: str) -> dict[str, Any]:
    def reported() -> dict[str, Any] | None:
        task = flower.tasks().get(task_id)
        return flower.task(task_id) if task and task["state"] == state else None

    return wait_until(reported, timeout=30, interval=0.2, what=f"{task_id} {state} in Flower")


def dead_letters(redis_url: str) -> list[Any]:
    reader = EventBus(Celery("members-reader", broker=redis_url), service="members")
    try:
        return reader.dead_letters.list()
    finally:
        reader.close()


def test_fields_are_never_clear_in_redis_flower_or_the_worker_log_and_clear_for_the_handler(
    start_worker: Callable[..., Any],
    flower: Flower,
    publisher: EventBus,
    redis_client: redis.Redis,
    redis_url: str,
    keys: Path,
) -> None:
    data = {"user_id": 4711, "email": EMAIL, "address": {"street": STREET, "city": "London"}}
    # Given a subscriber whose worker registered its subscriptions and stopped
    start_worker(MEMBERS, env={"MEMBERS_KEYS": str(keys)}).stop()
    # When an event with two sensitive fields is published
    (delivery,) = publisher.publish("user.registered", data).deliveries
    # Then the queued message holds them encrypted: neither value is anywhere in Redis,
    # though the rest of the event is (the scan sees the message bodies)
    stored = redis_text(redis_client)
    assert "4711" in stored and "enc:v1:" in stored
    assert EMAIL not in stored and STREET not in stored

    # When the worker runs, Then the handler gets the clear values
    worker = start_worker(MEMBERS, env={"MEMBERS_KEYS": str(keys)})
    [effect] = wait_until(lambda: effects(redis_client, "members.welcome"), what="the welcome")
    assert effect["digests"]["email"] == digest(EMAIL)
    assert effect["digests"]["address"] == digest({"street": STREET, "city": "London"})
    # And Flower shows the delivery's arguments masked
    task = flower_task(flower, delivery.task_id, "SUCCESS")
    assert f"'email': '{MASK}'" in task["args"] and "4711" in task["args"]
    assert EMAIL not in json.dumps(task)

    # When a handler fails for good, Then its dead letter holds the ciphertext only
    (failed,) = publisher.publish("user.deleted", {"user_id": 4712, "email": EMAIL}).deliveries
    [letter] = wait_until(lambda: dead_letters(redis_url), what="the dead letter")
    assert letter.task_id == failed.task_id and letter.envelope["data"]["email"].startswith(
        "enc:v1:"
    )
    stored = redis_text(redis_client)
    assert "4712" in stored and EMAIL not in stored and STREET not in stored
    task = flower_task(flower, failed.task_id, "FAILURE")
    assert f"'email': '{MASK}'" in task["args"] and EMAIL not in json.dumps(task)

    # And the worker logged the argument text of its deliveries, masked, never the values
    log = worker.log()
    assert "logged args: [{'specversion'" in log and f"'email': '{MASK}'" in log
    assert EMAIL not in log and STREET not in log


def test_a_subscriber_masks_its_own_fields_in_flower_its_retry_and_its_log(
    start_worker: Callable[..., Any],
    flower: Flower,
    publisher: EventBus,
    redis_client: redis.Redis,
    keys: Path,
) -> None:
    # Given a subscriber that names "phone" sensitive for an event its publisher did not
    # declare, and whose handler fails once and retries 3 s later
    worker = start_worker(MEMBERS, env={"MEMBERS_KEYS": str(keys)})
    # When the event is published
    data = {"user_id": 4713, "phone": PHONE, "failures": 1}
    (delivery,) = publisher.publish("user.updated", data).deliveries
    # Then Flower shows the delivery masked while it waits for its retry
    retrying = flower_task(flower, delivery.task_id, "RETRY")
    assert f"'phone': '{MASK}'" in retrying["args"] and PHONE not in json.dumps(retrying)
    # and after the retry, which kept the masked text
    done = flower_task(flower, delivery.task_id, "SUCCESS")
    assert done["retries"] == 1 and f"'phone': '{MASK}'" in done["args"]
    assert PHONE not in json.dumps(done)
    [effect] = effects(redis_client, "members.update")
    assert effect["digests"]["phone"] == digest(PHONE)
    # And the worker's log holds the masked text of both runs and never the number
    log = worker.log()
    assert log.count(f"'phone': '{MASK}'") >= 2 and PHONE not in log


def test_an_old_key_still_decrypts_after_rotation_and_a_changed_ciphertext_is_refused(
    start_worker: Callable[..., Any],
    redis_client: redis.Redis,
    redis_url: str,
    keys: Path,
) -> None:
    # Given a subscriber holding the old and the new key, encrypting with the new one
    start_worker(MEMBERS, env={"MEMBERS_KEYS": str(keys)})
    raw = {path.stem: path.read_text().strip() for path in keys.glob("*.aes")}
    # When a publisher that still encrypts with the old key publishes
    old = shop(redis_url, {OLD: raw[OLD]})
    try:
        result = old.publish("user.registered", {"user_id": 1, "email": EMAIL})
        assert result.event.data["email"].startswith(f"enc:v1:{OLD}:")
    finally:
        old.close()
    # Then the handler gets the clear value
    [effect] = wait_until(lambda: effects(redis_client, "members.welcome"), what="the welcome")
    assert effect["digests"]["email"] == digest(EMAIL)

    # When a delivery arrives whose ciphertext was changed (by someone with Redis access)
    forger = shop(redis_url, None)
    try:
        event = forger.new_event("user.registered", {"user_id": 2})
        sealed = EncryptionKeys({NEW: base64.b64decode(raw[NEW])}).encrypt(EMAIL, event.id, "email")
        prefix, _, payload = sealed.rpartition(":")
        flipped = bytearray(base64.b64decode(payload))
        flipped[-1] ^= 1
        changed = prefix + ":" + base64.b64encode(bytes(flipped)).decode()
        forged = Event.create(
            "user.registered", {"user_id": 2, "email": changed}, source="shop",
            id=event.id, extensions=event.extensions,
        )
        (delivery,) = forger.publish_event(forged).deliveries
    finally:
        forger.close()
    # Then it is dead-lettered undecryptable, and the handler never ran on it
    [letter] = wait_until(lambda: dead_letters(redis_url), what="the dead letter")
    assert letter.task_id == delivery.task_id and letter.reason == Reason.UNDECRYPTABLE
    assert "does not verify" in letter.error_message and letter.attempts == 1
    assert len(effects(redis_client, "members.welcome")) == 1
