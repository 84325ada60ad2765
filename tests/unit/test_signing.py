"""Signed events on the memory backend: the publisher signs once per event over what is sent,
the subscriber checks before the inbox and the handler, replays keep the signature."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_events import (
    ConfigurationError,
    Event,
    EventBus,
    ForeignSourceRefused,
    ReplayError,
    _worker,
)
from celery_events.backends import memory
from celery_events.envelope import signing_input
from celery_events.testing import HandlerRunner, capture_published
from celery_events.trust.keys import generate_ed25519, generate_hmac, load_signing_key
from celery_events.trust.signing import Signing, retry_schedule, sign_event


@pytest.fixture(autouse=True)
def _fresh_memory() -> Iterator[None]:
    memory.reset()
    yield
    memory.reset()


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """Key pairs of shop and payments; trusted/ holds both public keys."""
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    for service in ("shop", "payments"):
        private, public = generate_ed25519()
        (tmp_path / f"{service}.k1.key").write_bytes(private)
        (trusted / f"{service}.k1.pub").write_bytes(public)
    return tmp_path


def make_bus(name: str, **settings: Any) -> EventBus:
    return EventBus(Celery(name, broker="memory://", set_as_current=False), service=name, **settings)


def signer(keys: Path, name: str, **settings: Any) -> EventBus:
    return make_bus(name, signing_key=str(keys / f"{name}.k1.key"), **settings)


def subscriber(keys: Path, seen: list[Event], **settings: Any) -> EventBus:
    bus = make_bus("billing", trusted_keys=str(keys / "trusted"), retry_jitter=False, **settings)

    @bus.subscribe("order.#")
    def invoice(event: Event) -> None:
        seen.append(event)

    @bus.subscribe("order.placed")
    def audit(event: Event) -> None:
        seen.append(event)

    bus.register()
    return bus


ODD_DATA: dict[str, Any] = {
    "text": "é ü 漢字 😀 \u2028 \"quoted\" \\ back",
    "lone": "\ud800",
    "floats": [0.1 + 0.2, 1e300, -0.0, 5e-324, 1.0, 123456789.123456789],
    "big": 2**70,
    "negative": -(2**64),
    "nested": {"z": {"y": [{"x": None}, [], {}]}, "a": True},
    "tuple": (1, 2, "three"),
}


class Tag(str):
    """A str subclass, as enums and ORMs hand out."""


def test_every_delivery_of_a_published_event_carries_one_signature_that_verifies(
    keys: Path,
) -> None:
    # Given a signing shop and a subscriber with two handlers that trusts it
    seen: list[Event] = []
    billing = subscriber(keys, seen)
    shop = signer(keys, "shop")

    # When shop publishes odd data (unicode, floats, big ints, nesting, a tuple, a str subclass)
    result = shop.publish("order.placed", {**ODD_DATA, "tag": Tag("vip")})
    runs = HandlerRunner().work(billing)

    # Then both deliveries ran, with one and the same signature of shop's key
    assert [r.status for r in runs] == ["succeeded", "succeeded"]
    assert len(result.deliveries) == 2
    signatures = {e.extensions["signature"] for e in seen}
    assert len(signatures) == 1 and {e.extensions["signaturekeyid"] for e in seen} == {"k1"}
    assert seen[0].data["big"] == 2**70 and seen[0].data["tuple"] == [1, 2, "three"]
    assert seen[0].data["floats"][0] == 0.1 + 0.2


def test_the_signed_bytes_are_what_the_subscriber_rebuilds_from_the_json(keys: Path) -> None:
    shop = signer(keys, "shop")
    with capture_published(shop) as published:
        shop.publish("order.placed", {**ODD_DATA, "tag": Tag("vip")})
    (event,) = published
    # What a subscriber reads: the envelope as JSON text (as every transport sends it), parsed.
    received = json.loads(json.dumps(event.to_envelope()))
    key = load_signing_key("shop", str(keys / "shop.k1.key")).verification_key()
    from celery_events.trust.keys import b64decode

    assert key.verify(signing_input(received), b64decode(event.extensions["signature"]))


def test_data_changed_after_publish_is_called_is_signed_as_sent(keys: Path) -> None:
    # A publish scope that defers (as publish-on-commit does) while the caller changes its dict
    from celery_events import Middleware, PublishCall

    later: list[Any] = []

    class Deferring(Middleware):
        def publish(self, call: PublishCall, call_next: Any) -> Any:
            later.append(lambda: call_next(call))
            from celery_events import PublishResult

            return PublishResult(call.event)

    seen: list[Event] = []
    billing = subscriber(keys, seen)
    shop = make_bus("shop", signing_key=str(keys / "shop.k1.key"), middleware=[Deferring()])
    data = {"order_id": 1}
    shop.publish("order.placed", data)
    data["order_id"] = 2  # the caller reuses its dict before the deferred send
    later[0]()
    runs = HandlerRunner().work(billing)
    assert [r.status for r in runs] == ["succeeded", "succeeded"]
    assert seen[0].data == {"order_id": 1}


def test_an_event_in_the_name_of_another_service_is_refused_and_nothing_is_sent(
    keys: Path,
) -> None:
    seen: list[Event] = []
    billing = subscriber(keys, seen)
    shop = signer(keys, "shop")
    with pytest.raises(ForeignSourceRefused, match="has source 'payments'.*signs only as itself"):
        shop.publish_event(Event.create("order.placed", {}, source="payments"))
    assert HandlerRunner().work(billing) == []


@pytest.mark.parametrize("how", ["unsigned", "other key", "edited", "source rewritten"])
def test_a_forged_or_changed_delivery_is_dead_lettered_and_its_handler_never_runs(
    keys: Path, how: str
) -> None:
    seen: list[Event] = []
    billing = subscriber(keys, seen)
    shop = signer(keys, "shop")
    payments_key = load_signing_key("payments", str(keys / "payments.k1.key"))
    with capture_published(shop) as published:
        shop.publish("order.placed", {"amount": 10})
    envelope = published[0].to_envelope()
    if how == "unsigned":
        forged = Event.create("order.placed", {"amount": 10}, source="shop").to_envelope()
    elif how == "other key":  # payments signs an event in shop's name
        event = Event.create("order.placed", {"amount": 10}, source="payments")
        forged = {**sign_event(event, payments_key).to_envelope(), "source": "shop"}
    elif how == "edited":
        forged = {**envelope, "data": {"amount": 10_000}}
    else:
        forged = {**envelope, "source": "payments"}
    runs = HandlerRunner().run(billing, forged)
    assert {(r.status, r.reason, r.attempts) for r in runs} == {
        ("dead_lettered", "invalid_signature", 0)
    }
    assert seen == []
    letters = billing.dead_letters.list()
    assert len(letters) == 2 and {lt.reason for lt in letters} == {"invalid_signature"}
    # The raw envelope is kept as it arrived, for the operator to inspect
    assert all(lt.envelope == forged for lt in letters)
    assert all(lt.error_message.startswith("Invalid signature: ") for lt in letters)


def test_expired_and_future_events_are_refused_saying_which(keys: Path) -> None:
    seen: list[Event] = []
    billing = subscriber(keys, seen, signature_max_age=3600)
    key = load_signing_key("shop", str(keys / "shop.k1.key"))
    now = datetime.now(timezone.utc)
    old = sign_event(Event.create("order.placed", {}, source="shop", time=now - timedelta(hours=2)), key)
    ahead = sign_event(Event.create("order.placed", {}, source="shop", time=now + timedelta(hours=1)), key)
    slightly_ahead = sign_event(
        Event.create("order.placed", {}, source="shop", time=now + timedelta(seconds=60)), key
    )
    runner = HandlerRunner()
    assert {r.reason for r in runner.run(billing, old)} == {"invalid_signature"}
    assert {r.reason for r in runner.run(billing, ahead)} == {"invalid_signature"}
    assert {r.status for r in runner.run(billing, slightly_ahead)} == {"succeeded"}
    messages = {lt.event_id: lt.error_message for lt in billing.dead_letters.list()}
    assert "2.0 h ago, longer than signature_max_age (60 min): it is too old" in messages[old.id]
    assert "60 min in the future" in messages[ahead.id]
    assert len(seen) == 2


def test_migration_mode_checks_signatures_that_are_there_and_lets_unsigned_events_pass(
    keys: Path,
) -> None:
    # Given a subscriber that trusts shop's key but does not require signatures yet
    seen: list[Event] = []
    billing = subscriber(keys, seen, require_signatures=False)
    key = load_signing_key("shop", str(keys / "shop.k1.key"))
    runner = HandlerRunner()
    unsigned = Event.create("order.placed", {}, source="shop")
    signed = sign_event(Event.create("order.placed", {"n": 1}, source="shop"), key)
    # a source it has no key of: nothing to check it with, like an unsigned event
    other_private, _ = generate_ed25519()
    (keys / "stranger.s1.key").write_bytes(other_private)
    stranger = sign_event(
        Event.create("order.placed", {}, source="stranger"),
        load_signing_key("stranger", str(keys / "stranger.s1.key")),
    )
    tampered = {**signed.to_envelope(), "data": {"n": 2}}
    assert {r.status for r in runner.run(billing, unsigned)} == {"succeeded"}
    assert {r.status for r in runner.run(billing, signed)} == {"succeeded"}
    assert {r.status for r in runner.run(billing, stranger)} == {"succeeded"}
    assert {r.reason for r in runner.run(billing, tampered)} == {"invalid_signature"}
    assert len(seen) == 6


def test_with_signing_off_a_forged_source_is_handled_as_genuine() -> None:
    # What the README documents: without trusted_keys, anyone who can reach the broker is
    # every service.
    seen: list[Event] = []
    billing = make_bus("billing")

    @billing.subscribe("payment.settled")
    def settle(event: Event) -> None:
        seen.append(event)

    billing.register()
    intruder = make_bus("intruder")
    intruder.publish_event(Event.create("payment.settled", {"amount": 1}, source="payments"))
    assert [r.status for r in HandlerRunner().work(billing)] == ["succeeded"]
    assert seen[0].source == "payments"


def test_hmac_signing_between_two_services_sharing_a_secret(tmp_path: Path) -> None:
    (tmp_path / "shop.team.hmac").write_bytes(generate_hmac())
    seen: list[Event] = []
    billing = make_bus("billing", trusted_keys=str(tmp_path))

    @billing.subscribe("order.placed")
    def invoice(event: Event) -> None:
        seen.append(event)

    billing.register()
    shop = make_bus("shop", signing_key=str(tmp_path / "shop.team.hmac"))
    shop.publish("order.placed", {"n": 1})
    assert [r.status for r in HandlerRunner().work(billing)] == ["succeeded"]
    assert seen[0].extensions["signaturekeyid"] == "team"


def test_rotation_at_the_bus_old_and_new_keys_both_verify(keys: Path) -> None:
    # Given billing trusting shop's old key k1 and its new key k2
    private, public = generate_ed25519()
    (keys / "shop.k2.key").write_bytes(private)
    (keys / "trusted" / "shop.k2.pub").write_bytes(public)
    seen: list[Event] = []
    billing = subscriber(keys, seen)
    # When one shop process still signs with k1 and a restarted one with k2
    old = signer(keys, "shop")
    old.publish("order.placed", {"n": 1})
    old.close()
    memory_apps_keep = make_bus("shop", signing_key=str(keys / "shop.k2.key"))
    memory_apps_keep.publish("order.placed", {"n": 2})
    # Then every delivery runs
    runs = HandlerRunner().work(billing)
    assert len(runs) == 4 and {r.status for r in runs} == {"succeeded"}
    assert {e.extensions["signaturekeyid"] for e in seen} == {"k1", "k2"}


def test_a_replay_keeps_the_signature_and_an_edited_letter_is_refused_again(keys: Path) -> None:
    # Given a signed delivery that failed and was dead-lettered
    failing = {"on": True}
    runs_of: list[Event] = []
    billing = make_bus(
        "billing", trusted_keys=str(keys / "trusted"), max_retries=0, retry_jitter=False
    )

    @billing.subscribe("order.placed")
    def invoice(event: Event) -> None:
        runs_of.append(event)
        if failing["on"]:
            raise RuntimeError("the ledger is down")

    billing.register()
    shop = signer(keys, "shop")
    shop.publish("order.placed", {"amount": 10})
    runner = HandlerRunner()
    assert [r.reason for r in runner.work(billing)] == ["retries_exhausted"]
    (letter,) = billing.dead_letters.list()
    signature = letter.envelope["signature"]  # type: ignore[index]

    # When it is replayed once the handler is fixed, it runs with the original signature
    failing["on"] = False
    billing.dead_letters.replay(letter.id)
    assert [r.status for r in runner.work(billing)] == ["succeeded"]
    assert runs_of[-1].extensions["signature"] == signature

    # And a dead letter whose data was edited in the store is replayed, and refused unrun
    failing["on"] = True
    shop.publish("order.placed", {"amount": 20})
    runner.work(billing)
    (letter,) = billing.dead_letters.list()
    edited = {**letter.to_json(), "envelope": {**letter.envelope, "data": {"amount": 1}}}  # type: ignore[dict-item]
    billing.dead_letters.records.add(letter.id, json.dumps(edited), time.time())
    runs_before = len(runs_of)
    billing.dead_letters.replay(letter.id)
    assert [(r.status, r.reason) for r in runner.work(billing)] == [
        ("dead_lettered", "invalid_signature")
    ]
    assert len(runs_of) == runs_before


def test_a_replay_of_a_signed_event_too_old_for_any_subscriber_sends_nothing(keys: Path) -> None:
    billing = make_bus("billing", trusted_keys=str(keys / "trusted"), signature_max_age=3600)

    @billing.subscribe("order.placed")
    def invoice(event: Event) -> None:
        raise AssertionError("never runs")

    billing.register()
    key = load_signing_key("shop", str(keys / "shop.k1.key"))
    fresh = sign_event(Event.create("order.placed", {}, source="shop"), key)
    old = sign_event(
        Event.create(
            "order.placed", {}, source="shop",
            time=datetime.now(timezone.utc) - timedelta(hours=3),
        ),
        key,
    )
    runner = HandlerRunner()
    runner.run(billing, fresh)  # dead-lettered: the handler fails and has retries...
    runner.run(billing, old)  # ...and refused as too old
    letters = billing.dead_letters.list()
    assert len(letters) == 2
    # When both are replayed at once, none is sent: the old one could never pass
    with pytest.raises(ReplayError, match="signed 3.0 h ago, longer than signature_max_age"):
        billing.dead_letters.replay(reason=None)
    assert billing.dead_letters.count() == 2
    assert runner.work(billing) == []
    # And a direct resend of it through the bus refuses it the same way
    with pytest.raises(ReplayError, match="it is not sent"):
        billing._resend(old.to_envelope(), "billing.invoice", "events.billing")


def test_settings_that_cannot_work_are_refused_when_the_bus_is_made(keys: Path) -> None:
    with pytest.raises(ConfigurationError, match="require_signatures=True but no trusted_keys"):
        make_bus("billing", require_signatures=True)
    empty = keys / "empty"
    empty.mkdir()
    with pytest.raises(ConfigurationError, match="requires signatures but trusts no key"):
        make_bus("billing", trusted_keys=str(empty))
    with pytest.raises(ConfigurationError, match="longer than inbox_ttl"):
        make_bus("billing", trusted_keys=str(keys / "trusted"), inbox_ttl=3600)
    with pytest.raises(ConfigurationError, match="is a key of service 'shop', not of 'billing'"):
        make_bus("billing", signing_key=str(keys / "shop.k1.key"))
    # Migration mode with an empty directory is allowed (keys are being handed out)
    assert make_bus("billing", trusted_keys=str(empty), require_signatures=False)


def test_a_worker_whose_retries_outlast_the_signature_window_does_not_start(keys: Path) -> None:
    billing = make_bus("billing", trusted_keys=str(keys / "trusted"), signature_max_age=600)

    @billing.subscribe("order.placed", max_retries=5, retry_backoff=60, retry_backoff_max=300)
    def invoice(event: Event) -> None: ...

    with pytest.raises(ConfigurationError, match=r"'billing.invoice' may retry for up to 47 min .*longer than signature_max_age \(10 min\)"):
        _worker.check_worker(billing)
    assert retry_schedule(5, 60, 300, 300) == 60 + 120 + 240 + 300 + 300 + 6 * 300


def test_capture_sees_signed_events_and_signing_is_one_middleware(keys: Path) -> None:
    shop = signer(keys, "shop")
    assert [type(m) for m in shop.middleware] == [Signing]
    with capture_published(shop) as published:
        shop.publish("order.placed", {"n": 1})
    assert published[0].extensions["signaturekeyid"] == "k1"
    assert make_bus("plain").middleware.publish_scope is None  # signing off: nothing added
    assert make_bus("plain2").middleware.receive_hooks == ()


def test_an_event_kept_aside_unsigned_and_relayed_later_is_signed_when_sent(keys: Path) -> None:
    # As the Django outbox does: its middleware (outside the signing one) stores the event as
    # JSON, and the relay sends it later with publish_event, through the whole chain.
    from celery_events import Middleware, PublishCall, PublishResult

    stored: list[str] = []

    class Outbox(Middleware):
        relaying = False

        def publish(self, call: PublishCall, call_next: Any) -> PublishResult:
            if self.relaying:
                return call_next(call)
            stored.append(json.dumps(call.event.to_envelope()))
            return PublishResult(call.event)

    outbox = Outbox()
    seen: list[Event] = []
    billing = subscriber(keys, seen)
    shop = make_bus("shop", signing_key=str(keys / "shop.k1.key"), middleware=[outbox])
    shop.publish("order.placed", {"n": 1})
    assert "signature" not in json.loads(stored[0])  # kept aside before it was signed
    outbox.relaying = True
    shop.publish_event(Event.from_envelope(json.loads(stored[0])))
    assert [r.status for r in HandlerRunner().work(billing)] == ["succeeded", "succeeded"]
    assert seen[0].extensions["signaturekeyid"] == "k1"


def test_one_event_to_two_handlers_is_checked_once_and_odd_signature_values_are_refused(
    keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Event] = []
    billing = subscriber(keys, seen)
    [signing] = [m for m in billing.middleware if isinstance(m, Signing)]
    checks: list[str] = []
    verify = signing.keyring.verify

    def counted(*args: Any) -> None:
        checks.append(str(args[0]))
        verify(*args)

    monkeypatch.setattr(signing.keyring, "verify", counted)
    signer(keys, "shop").publish("order.placed", {"n": 1})
    assert [r.status for r in HandlerRunner().work(billing)] == ["succeeded", "succeeded"]
    assert checks == ["shop"]
    # A signature or key id that is not a string is refused like any bad signature
    for odd in ({"signature": ["x"], "signaturekeyid": "k1"}, {"signature": "x", "signaturekeyid": {"a": 1}}):
        envelope = {**Event.create("order.placed", {}, source="shop").to_envelope(), **odd}
        # The screening of real transports refuses such extension values earlier; the hook
        # itself must not fail on them either.
        from celery_events.errors import DeliveryRefused
        from celery_events.middleware.base import Receipt

        receipt = Receipt(envelope, Event.create("order.placed", {}, source="shop"), "h", "q", "t", "billing")
        with pytest.raises(DeliveryRefused) as caught:
            signing.receive(receipt)
        assert caught.value.reason == "invalid_signature"


def test_a_refusal_keeps_its_reason_when_celery_rebuilds_or_pickles_it() -> None:
    import pickle

    from celery_events import DeliveryRefused

    refused = DeliveryRefused("The event is not signed.", reason="invalid_signature")
    again = pickle.loads(pickle.dumps(refused))
    assert (str(again), again.reason) == ("The event is not signed.", "invalid_signature")
    # Celery rebuilds a failed task's exception from its type and message alone
    assert DeliveryRefused(*refused.args).reason == "rejected"


def test_libsodium_and_openssl_make_the_same_ed25519_signature(tmp_path: Path) -> None:
    # The signing key signs with libsodium when PyNaCl is there: Ed25519 is deterministic, so
    # a subscriber sees exactly what OpenSSL would have made.
    private, _ = generate_ed25519()
    (tmp_path / "shop.k1.key").write_bytes(private)
    key = load_signing_key("shop", str(tmp_path / "shop.k1.key"))
    assert key._sodium is not None
    for message in (b"", b"x", "é".encode() * 500):
        assert key.sign(message) == key._material.sign(message)
        assert key.verification_key().verify(message, key.sign(message))
