"""Signed events against hostile peers, with real `celery worker` processes on a real Redis.

Each attack of issue 13 is tried with signing on (refused: a dead letter with reason
``invalid_signature``, the handler never runs), and once with signing off, where the forgery is
handled as genuine (what the README's threat model says).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celery_events import Event, EventBus, ForeignSourceRefused, ReplayError
from celery_events.envelope import signing_input
from celery_events.trust.keys import Keyring, generate_ed25519, load_signing_key

from ..harness import wait_until
from .conftest import effects

LEDGER = "tests.services.signed"
RUNS_KEY = "test:runs"  # tests.services.signed.RUNS_KEY
BROKEN_KEY = "test:broken"  # tests.services.signed.BROKEN_KEY
QUEUE = "events.ledger"


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """Key pairs of payments, intruder and ledger; trusted/ holds every public key (the
    intruder is a service the ledger hears from too: trusted for its own events, not for
    payments'; the ledger signs its registry record)."""
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    for service in ("payments", "intruder", "ledger"):
        private, public = generate_ed25519()
        (tmp_path / f"{service}.k1.key").write_bytes(private)
        (trusted / f"{service}.k1.pub").write_bytes(public)
    return tmp_path


@pytest.fixture
def buses(redis_url: str, keys: Path) -> Iterator[Callable[..., EventBus]]:
    made: list[EventBus] = []

    def make(service: str, **settings: Any) -> EventBus:
        bus = EventBus(Celery(service, broker=redis_url), service=service, **settings)
        made.append(bus)
        return bus

    yield make
    for bus in made:
        bus.close()


def runs(client: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(RUNS_KEY, 0, -1)]


def ledger_env(keys: Path, **extra: str) -> dict[str, str]:
    return {
        "SIGNED_TRUSTED": str(keys / "trusted"), "SIGNED_KEY": str(keys / "ledger.k1.key"),
        **extra,
    }


def view(buses: Callable[..., EventBus], keys: Path, **settings: Any) -> EventBus:
    """The ledger's bus as an operator's shell holds it (no handlers): its dead letters."""
    return buses("ledger", trusted_keys=str(keys / "trusted"), **settings)


def refused(bus: EventBus, count: int) -> list[Any]:
    def found() -> list[Any]:
        letters = bus.dead_letters.list(reason="invalid_signature")
        return letters if len(letters) >= count else []

    return wait_until(found, timeout=20, what=f"{count} invalid_signature dead letter(s)")


def hand_made_delivery(envelope: dict[str, Any], task: str = "ledger.settle") -> bytes:
    """A Celery protocol-2 message as kombu's Redis transport stores one, written by hand."""
    task_id = str(uuid.uuid4())
    body = json.dumps([[envelope], {}, {"callbacks": None, "errbacks": None, "chain": None,
                                         "chord": None}])
    message = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None,
            "expires": None, "group": None, "group_index": None, "retries": 0,
            "timelimit": [None, None], "root_id": task_id, "parent_id": None,
            "argsrepr": repr([envelope]), "kwargsrepr": "{}", "origin": "gen1@intruder",
            "ignore_result": False,
        },
        "properties": {
            "correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": QUEUE}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(message).encode()


def test_an_event_in_payments_name_from_another_service_is_refused(
    start_worker: Callable[..., Any], buses: Callable[..., EventBus], keys: Path,
    redis_client: redis.Redis,
) -> None:
    # Given the ledger, which trusts payments and intruder, running
    start_worker(LEDGER, env=ledger_env(keys))
    ledger = view(buses, keys)
    # And the intruder, a service of its own with its own key
    signing_intruder = buses("intruder", signing_key=str(keys / "intruder.k1.key"))
    plain_intruder = buses("intruder2")
    forged = Event.create("payment.settled", {"amount": 1_000_000}, source="payments")

    # When its signing bus is asked to send an event in payments' name, it refuses
    with pytest.raises(ForeignSourceRefused):
        signing_intruder.publish_event(forged)
    # And when it sends one unsigned, and one signed with its own key, from an unsigned bus
    plain_intruder.publish_event(forged)
    ring = Keyring(load_signing_key("intruder", str(keys / "intruder.k1.key")))
    unsigned = Event.create("payment.settled", {"amount": 2_000_000}, source="payments")
    key_id, signature = ring.sign(signing_input(unsigned.to_envelope()))
    own_signed = unsigned.with_extensions(signature=signature, signaturekeyid=key_id)
    plain_intruder.publish_event(own_signed)

    # Then both are dead-lettered as invalid_signature, and the handler never ran
    letters = refused(ledger, 2)
    messages = {lt.event_id: lt.error_message for lt in letters}
    assert "not signed" in messages[forged.id]
    assert "signed with key 'k1' of intruder" in messages[own_signed.id]
    assert runs(redis_client) == [] and effects(redis_client) == []


def test_a_hand_made_delivery_pushed_on_the_queue_is_refused(
    start_worker: Callable[..., Any], buses: Callable[..., EventBus], keys: Path,
    redis_client: redis.Redis,
) -> None:
    # Given the ledger running, and a genuine signed event of payments it handled
    start_worker(LEDGER, env=ledger_env(keys))
    ledger = view(buses, keys)
    payments = buses("payments", signing_key=str(keys / "payments.k1.key"))
    genuine = payments.publish("payment.settled", {"amount": 5}).event
    wait_until(lambda: len(effects(redis_client)) == 1, what="the genuine event handled")

    # When a peer with Redis access LPUSHes hand-made deliveries: a forged envelope with no
    # signature, and one that borrows the genuine event's signature for other data
    bare = Event.create("payment.settled", {"amount": 9_999}, source="payments").to_envelope()
    sent = effects(redis_client)[0]
    borrowed = {
        **Event.create("payment.settled", {"amount": 9_999}, source="payments").to_envelope(),
        "signature": runs(redis_client)[0]["signature"], "signaturekeyid": "k1",
    }
    redis_client.lpush(QUEUE, hand_made_delivery(bare))
    redis_client.lpush(QUEUE, hand_made_delivery(borrowed))

    # Then both are dead-lettered as invalid_signature, the handler never ran for them
    letters = refused(ledger, 2)
    assert {lt.event_id for lt in letters} == {bare["id"], borrowed["id"]}
    assert "does not match its content" in next(
        lt.error_message for lt in letters if lt.event_id == borrowed["id"]
    )
    assert [r["event_id"] for r in runs(redis_client)] == [genuine.id]
    assert sent["event_id"] == genuine.id and len(effects(redis_client)) == 1


def test_retries_keep_the_signature_and_a_replayed_failed_delivery_runs(
    start_worker: Callable[..., Any], buses: Callable[..., EventBus], keys: Path,
    redis_client: redis.Redis,
) -> None:
    start_worker(LEDGER, env=ledger_env(keys))
    ledger = view(buses, keys)
    payments = buses("payments", signing_key=str(keys / "payments.k1.key"))

    # When a signed event's handler fails twice, then succeeds
    flaky = payments.publish("payment.settled", {"amount": 1, "fail_times": 2}).event
    wait_until(lambda: len(effects(redis_client)) == 1, what="the third run to succeed")
    # Then every run saw the same signature, and the retries were not refused
    seen = [r for r in runs(redis_client) if r["event_id"] == flaky.id]
    assert [r["retries"] for r in seen] == [0, 1, 2]
    assert len({r["signature"] for r in seen}) == 1 and seen[0]["signature"]

    # When a delivery fails until it is dead-lettered, and is replayed once the handler works
    redis_client.set(BROKEN_KEY, "1")
    failed = payments.publish("payment.settled", {"amount": 2}).event
    letter = wait_until(
        lambda: ledger.dead_letters.list(reason="retries_exhausted"), what="a dead letter"
    )[0]
    redis_client.delete(BROKEN_KEY)
    ledger.dead_letters.replay(letter.id)

    # Then the replay runs with the original signature and takes effect
    wait_until(lambda: len(effects(redis_client)) == 2, what="the replay to take effect")
    replayed = [r for r in runs(redis_client) if r["event_id"] == failed.id]
    assert len(replayed) == 4 and len({r["signature"] for r in replayed}) == 1
    assert ledger.dead_letters.count() == 0


def test_a_dead_letter_edited_in_the_store_is_replayed_and_refused(
    start_worker: Callable[..., Any], buses: Callable[..., EventBus], keys: Path,
    redis_client: redis.Redis,
) -> None:
    # Given a signed delivery that was dead-lettered
    start_worker(LEDGER, env=ledger_env(keys))
    ledger = view(buses, keys)
    payments = buses("payments", signing_key=str(keys / "payments.k1.key"))
    redis_client.set(BROKEN_KEY, "1")
    event = payments.publish("payment.settled", {"amount": 3}).event
    (letter,) = wait_until(
        lambda: ledger.dead_letters.list(reason="retries_exhausted"), what="a dead letter"
    )
    redis_client.delete(BROKEN_KEY)
    runs_before = len(runs(redis_client))

    # When someone with Redis access raises the amount in the stored record, and it is replayed
    record = letter.to_json()
    record["envelope"] = {**record["envelope"], "data": {"amount": 3_000}}
    ledger.dead_letters.records.add(letter.id, json.dumps(record), time.time())
    assert ledger.dead_letters.get(letter.id).envelope["data"] == {"amount": 3_000}  # type: ignore[index]
    ledger.dead_letters.replay(letter.id)

    # Then the worker refuses it as invalid_signature, and the handler never ran again
    (refusal,) = refused(ledger, 1)
    assert refusal.event_id == event.id and "does not match its content" in refusal.error_message
    assert len(runs(redis_client)) == runs_before and effects(redis_client) == []


def test_an_expired_event_is_refused_and_its_dead_letter_cannot_be_replayed(
    start_worker: Callable[..., Any], buses: Callable[..., EventBus], keys: Path,
    redis_client: redis.Redis,
) -> None:
    # Given a ledger that takes signed events at most an hour old
    start_worker(LEDGER, env=ledger_env(keys, SIGNED_MAX_AGE="3600"))
    ledger = view(buses, keys, signature_max_age=3600)
    payments = buses("payments", signing_key=str(keys / "payments.k1.key"))

    # When payments (re)sends an event of two hours ago, properly signed
    old = Event.create(
        "payment.settled", {"amount": 4}, source="payments",
        time=datetime.now(timezone.utc) - timedelta(hours=2),
    )
    payments.publish_event(old)

    # Then it is refused as too old, and the handler never ran
    (letter,) = refused(ledger, 1)
    assert "2.0 h ago, longer than signature_max_age (60 min): it is too old" in letter.error_message
    assert runs(redis_client) == []
    # And its replay is refused before anything is sent: it could never pass
    with pytest.raises(ReplayError, match="signed 2.0 h ago, longer than signature_max_age"):
        ledger.dead_letters.replay(letter.id)
    assert redis_client.llen(QUEUE) == 0 and ledger.dead_letters.count() == 1


def test_migration_mode_lets_unsigned_events_through_and_checks_signed_ones(
    start_worker: Callable[..., Any], buses: Callable[..., EventBus], keys: Path,
    redis_client: redis.Redis,
) -> None:
    start_worker(LEDGER, env=ledger_env(keys, SIGNED_REQUIRE="0"))
    ledger = view(buses, keys, require_signatures=False)
    unsigned = buses("payments").publish("payment.settled", {"amount": 6}).event
    wait_until(lambda: len(effects(redis_client)) == 1, what="the unsigned event handled")
    # A signed event changed on the way is still refused
    tampered = Event.create(
        "payment.settled", {"amount": 7}, source="payments",
        extensions={"signature": base64.b64encode(b"x" * 64).decode(), "signaturekeyid": "k1"},
    )
    buses("sender").publish_event(tampered)
    (letter,) = refused(ledger, 1)
    assert letter.event_id == tampered.id
    assert [e["event_id"] for e in effects(redis_client)] == [unsigned.id]


def test_with_signing_off_a_forged_event_is_handled_as_genuine(
    start_worker: Callable[..., Any], buses: Callable[..., EventBus], redis_client: redis.Redis,
) -> None:
    # Given the ledger without trusted_keys (signing off, as before this feature)
    start_worker(LEDGER)
    intruder = buses("intruder")
    # When another service publishes in payments' name, and pushes a hand-made delivery
    forged = Event.create("payment.settled", {"amount": 1_000_000}, source="payments")
    intruder.publish_event(forged)
    pushed = Event.create("payment.settled", {"amount": 2}, source="payments").to_envelope()
    redis_client.lpush(QUEUE, hand_made_delivery(pushed))
    # Then both run as if payments had sent them
    done = wait_until(lambda: len(effects(redis_client)) == 2 and effects(redis_client))
    assert {(e["event_id"], e["source"]) for e in done} == {
        (forged.id, "payments"), (pushed["id"], "payments")
    }


def test_a_worker_that_requires_signatures_without_trusted_keys_does_not_start(
    start_worker: Callable[..., Any],
) -> None:
    worker = start_worker(LEDGER, env={"SIGNED_REQUIRE": "1"}, ready=False)
    code = worker.process.wait(timeout=60)
    assert code != 0
    log = worker.log()
    assert "require_signatures=True but no trusted_keys" in log and " ready." not in log
