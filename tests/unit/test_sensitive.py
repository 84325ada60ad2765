"""Sensitive fields: paths, declarations, masking of the argument text, AES-GCM field
encryption with key ids and rotation, and refusal of what does not decrypt. End to end on the
memory backend through the real delivery task (the HandlerRunner); the same with real workers,
Redis and Flower is in tests/integration/redis/test_sensitive_fields.py."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_events import ConfigurationError, Event, EventBus, EventTooLarge
from celery_events.backends import memory
from celery_events.deadletters import Reason
from celery_events.declarations import Declaration
from celery_events.testing import HandlerRunner
from celery_events.trust.sensitive import (
    MASK,
    SENSITIVE,
    EncryptionKeys,
    check_paths,
    load_encryption_keys,
    mask_data,
    write_aes_key,
)

OLD = base64.b64encode(b"o" * 32).decode()
NEW = base64.b64encode(b"n" * 32).decode()
EMAIL = "ada@example.org"
STREET = "12 Analytical Row"
DATA = {"user_id": 7, "email": EMAIL, "address": {"street": STREET, "city": "London"}}


@pytest.fixture
def buses() -> Iterator[list[EventBus]]:
    made: list[EventBus] = []
    yield made
    for bus in made:
        bus.close()
    memory.reset()


def make_bus(buses: list[EventBus], service: str, **settings: Any) -> EventBus:
    bus = EventBus(Celery(service, broker="memory://"), service=service, **settings)
    buses.append(bus)
    return bus


def waiting(bus: EventBus, queue: str | None = None) -> list[tuple[dict[str, Any], str]]:
    """The ``(headers, body text)`` of every message waiting on a queue of ``bus``, left there."""
    found = []
    with bus.app.connection_for_read() as connection:
        channel = connection.default_channel
        taken = []
        while (message := channel.basic_get(queue or bus.default_queue)) is not None:
            taken.append(message)
        for message in taken:
            body = message.body
            found.append((dict(message.headers), body.decode() if isinstance(body, bytes) else body))
            message.requeue()
    return found


def shop_and_mailer(
    buses: list[EventBus], shop_keys: Any = None, mailer_keys: Any = None, **mailer: Any
) -> tuple[EventBus, EventBus, list[Event]]:
    shop = make_bus(buses, "shop", encryption_keys=shop_keys)
    shop.declare("user.registered", sensitive=["email", "address.street"])
    mailer_bus = make_bus(buses, "mailer", encryption_keys=mailer_keys, **mailer)
    seen: list[Event] = []
    mailer_bus.subscribe("user.registered", max_retries=1, retry_jitter=False)(seen.append)
    mailer_bus.register()
    return shop, mailer_bus, seen


# -- paths and declarations --------------------------------------------------------------


def test_paths_are_validated_with_a_typed_error_naming_the_value() -> None:
    assert check_paths(["email", "address.street", "email"], "x") == ("email", "address.street")
    with pytest.raises(ConfigurationError, match="list of field paths"):
        check_paths("email", "@bus.subscribe('user.registered')")
    for bad in ["", "a..b", "with space", "a,b", 3]:
        with pytest.raises(ConfigurationError, match="is not a field path"):
            check_paths([bad], "here")
    with pytest.raises(ConfigurationError, match="'address.street' is inside 'address'"):
        check_paths(["address", "address.street"], "here")


def test_declare_is_keyword_only_returns_a_declaration_and_refuses_a_different_second_one(
    buses: list[EventBus],
) -> None:
    bus = make_bus(buses, "shop")
    declared = bus.declare("user.registered", sensitive=["email"])
    assert declared == Declaration("user.registered", ("email",))
    assert bus.declare("user.registered", sensitive=["email"]) == declared  # same again: fine
    assert bus.declarations == [declared]
    with pytest.raises(ConfigurationError, match="already declared"):
        bus.declare("user.registered", sensitive=["phone"])
    with pytest.raises(TypeError):
        bus.declare("user.deleted", ["email"])  # type: ignore[misc]
    with pytest.raises(ConfigurationError, match="list of field paths"):
        bus.declare("user.deleted", sensitive="email")
    with pytest.raises(ConfigurationError, match="is not a field path"):
        bus.subscribe("user.*", sensitive=["a b"])


def test_masking_follows_dotted_paths_through_lists_and_copies_only_what_it_changes() -> None:
    data = {"cards": [{"no": 1, "kind": "visa"}, {"kind": "amex"}], "keep": {"x": 1}}
    masked = mask_data(data, ["cards.no", "missing.path", "keep.y"])
    assert masked == {"cards": [{"no": MASK, "kind": "visa"}, {"kind": "amex"}], "keep": {"x": 1}}
    assert masked["keep"] is data["keep"] and data["cards"][0]["no"] == 1
    assert mask_data(data, ["nothing"]) is data
    assert mask_data({"tags": ["a", "b"]}, ["tags"]) == {"tags": MASK}


# -- keys --------------------------------------------------------------------------------


def test_a_field_is_bound_to_its_event_and_location_and_names_its_key() -> None:
    keys = EncryptionKeys({"k1": b"k" * 32})
    for value in [EMAIL, 42, None, {"nested": [1, "two"]}, "é ✓"]:
        text = keys.encrypt(value, "event-1", "email")
        assert text.startswith("enc:v1:k1:") and json.dumps(value) not in text
        assert keys.decrypt(text, "event-1", "email") == value
    text = keys.encrypt(EMAIL, "event-1", "email")
    with pytest.raises(ValueError, match="moved from another event or field"):
        keys.decrypt(text, "event-2", "email")
    with pytest.raises(ValueError, match="moved from another event or field"):
        keys.decrypt(text, "event-1", "address.street")
    raw = bytearray(base64.b64decode(text.rsplit(":", 1)[1]))
    raw[-1] ^= 1
    tampered = "enc:v1:k1:" + base64.b64encode(bytes(raw)).decode()
    with pytest.raises(ValueError, match="does not verify"):
        keys.decrypt(tampered, "event-1", "email")
    with pytest.raises(ValueError, match="key 'gone'"):
        keys.decrypt("enc:v1:gone:AAAA", "event-1", "email")
    # Two encryptions of one value differ (a fresh nonce each time).
    assert keys.encrypt(EMAIL, "e", "f") != keys.encrypt(EMAIL, "e", "f")


def test_keys_load_from_a_directory_and_the_greatest_id_encrypts_unless_one_is_chosen(
    tmp_path: Path,
) -> None:
    first = write_aes_key(tmp_path, "20260101-a")
    write_aes_key(tmp_path, "20261201-b")
    assert first.stat().st_mode & 0o777 == 0o600
    keys = load_encryption_keys(str(tmp_path))
    assert keys.key_ids == ["20260101-a", "20261201-b"] and keys.key_id == "20261201-b"
    assert load_encryption_keys(tmp_path, "20260101-a").key_id == "20260101-a"
    assert load_encryption_keys({"k": OLD}).key_id == "k"
    with pytest.raises(ConfigurationError, match="not one of the keys"):
        load_encryption_keys({"k": OLD}, "other")
    with pytest.raises(ConfigurationError, match="is 3 bytes"):
        load_encryption_keys({"k": base64.b64encode(b"abc").decode()})
    with pytest.raises(ConfigurationError, match="not base64"):
        load_encryption_keys({"k": "not base64!"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigurationError, match="holds no .aes file"):
        load_encryption_keys(str(tmp_path / "empty"))
    with pytest.raises(ConfigurationError, match="encryption_keys is not set"):
        EventBus(Celery("x", broker="memory://"), service="x", encryption_key_id="k")
    memory.reset()


# -- end to end on the memory backend ----------------------------------------------------


def test_fields_are_encrypted_on_the_queue_masked_in_the_argument_text_and_clear_for_the_handler(
    buses: list[EventBus],
) -> None:
    # Given a publisher that declares two fields sensitive, and a subscriber, sharing a key
    shop, mailer, seen = shop_and_mailer(buses, {"k1": OLD}, {"k1": OLD})
    # When it publishes
    result = shop.publish("user.registered", DATA)
    # Then the queued message holds neither value in clear: ciphertext in the body, "***"
    # in the argument text Celery logs and Flower shows
    [(headers, body)] = waiting(mailer)
    assert EMAIL not in body and STREET not in body and EMAIL not in headers["argsrepr"]
    # (Celery's task_repr_maxlevels, 3, shows the address as {...} at that depth.)
    assert "'email': '***', 'address': {...}" in headers["argsrepr"]
    envelope = json.loads(body)[0][0]
    assert envelope[SENSITIVE] == "email,address.street"
    assert envelope["data"]["email"].startswith("enc:v1:k1:")
    # And the handler gets the clear values, the rest of the event unchanged
    [run] = HandlerRunner().work(mailer)
    assert run.status == "succeeded"
    assert seen[0].data == DATA and seen[0].id == result.event.id


def test_without_keys_a_declared_field_is_masked_but_sent_clear(buses: list[EventBus]) -> None:
    shop, mailer, seen = shop_and_mailer(buses)
    shop.publish("user.registered", DATA)
    [(headers, body)] = waiting(mailer)
    assert EMAIL in body and EMAIL not in headers["argsrepr"] and MASK in headers["argsrepr"]
    HandlerRunner().work(mailer)
    assert seen[0].data == DATA


def test_an_undeclared_event_carries_no_attribute_and_the_same_argument_text(
    buses: list[EventBus],
) -> None:
    shop, mailer, seen = shop_and_mailer(buses, {"k1": OLD}, {"k1": OLD})
    mailer.subscribe("order.placed", name="orders")(seen.append)
    mailer.register()
    shop.publish("order.placed", {"email": EMAIL})
    [(headers, body)] = waiting(mailer)
    assert SENSITIVE not in json.loads(body)[0][0] and EMAIL in headers["argsrepr"]


def test_a_retry_keeps_the_masked_argument_text_and_the_ciphertext(buses: list[EventBus]) -> None:
    shop, mailer, _ = shop_and_mailer(buses, {"k1": OLD}, {"k1": OLD})
    calls: list[Event] = []

    def flaky(event: Event) -> None:
        calls.append(event)
        raise RuntimeError("mail server away")

    mailer.subscribe("user.registered", name="flaky", max_retries=1, retry_jitter=False)(flaky)
    mailer.register()
    shop.publish("user.registered", DATA)
    HandlerRunner(run_retries=False).work(mailer)
    retries = [(h, b) for h, b in waiting(mailer) if h["task"] == "mailer.flaky"]
    [(headers, body)] = retries
    assert headers["retries"] == 1 and EMAIL not in headers["argsrepr"] + body
    assert MASK in headers["argsrepr"] and calls[0].data["email"] == EMAIL


def test_rotation_an_event_encrypted_with_the_old_key_decrypts_after_the_new_one_encrypts(
    buses: list[EventBus],
) -> None:
    # Given a publisher still encrypting with the old key, and a subscriber that already holds
    # the new key too and encrypts with it (the greatest id)
    old, new = "20260101-old", "20261201-new"
    shop, mailer, seen = shop_and_mailer(buses, {old: OLD}, {old: OLD, new: NEW})
    assert mailer.middleware.middleware[-1].keys.key_id == new  # type: ignore[attr-defined]
    shop.publish("user.registered", DATA)
    [(_, body)] = waiting(mailer)
    assert json.loads(body)[0][0]["data"]["email"].startswith(f"enc:v1:{old}:")
    # When the old event is delivered, Then it is decrypted with the old key
    [run] = HandlerRunner().work(mailer)
    assert run.status == "succeeded" and seen[0].data == DATA
    # And what the subscriber publishes now is encrypted with the new key
    mailer.declare("user.registered", sensitive=["email"])
    mailer.publish("user.registered", DATA)
    [(_, body)] = waiting(mailer)
    assert json.loads(body)[0][0]["data"]["email"].startswith(f"enc:v1:{new}:")


def test_a_tampered_or_unknown_key_field_is_dead_lettered_undecryptable_and_never_run(
    buses: list[EventBus],
) -> None:
    shop, mailer, seen = shop_and_mailer(buses, {"k1": OLD}, {"k2": NEW})
    shop.publish("user.registered", DATA)
    [run] = HandlerRunner().work(mailer)
    assert run.status == "dead_lettered" and run.reason == Reason.UNDECRYPTABLE and not seen
    [letter] = mailer.dead_letters.list()
    assert letter.reason == Reason.UNDECRYPTABLE and "'k1'" in letter.error_message
    assert EMAIL not in json.dumps(letter.envelope)
    # A ciphertext moved onto another field does not decrypt either
    keys = EncryptionKeys({"k2": b"n" * 32})
    event = Event.create("user.registered", dict(DATA), source="shop")
    moved = dict(event.data, email=keys.encrypt(STREET, event.id, "address.street"))
    envelope = {**event.to_envelope(), "data": moved, SENSITIVE: "email"}
    [run] = HandlerRunner().run(mailer, envelope)
    assert run.reason == Reason.UNDECRYPTABLE and not seen


def test_a_subscriber_without_keys_refuses_an_encrypted_field(buses: list[EventBus]) -> None:
    shop, mailer, seen = shop_and_mailer(buses, {"k1": OLD}, None)
    shop.publish("user.registered", DATA)
    [run] = HandlerRunner().work(mailer)
    assert run.reason == Reason.UNDECRYPTABLE and not seen
    assert "no encryption_keys" in mailer.dead_letters.list()[0].error_message


def test_a_replayed_dead_letter_is_sent_as_it_was_and_decrypts_once_the_key_is_there(
    buses: list[EventBus],
) -> None:
    shop, mailer, seen = shop_and_mailer(buses, {"k1": OLD}, {"k1": OLD})
    failures = iter([RuntimeError("down"), RuntimeError("down")])

    def fails_twice(event: Event) -> None:
        seen.append(event)
        error = next(failures, None)
        if error is not None:
            raise error

    mailer.subscribe("user.registered", name="fails", max_retries=1, retry_jitter=False)(fails_twice)
    mailer.register()
    shop.publish("user.registered", DATA)
    HandlerRunner().work(mailer)
    [letter] = mailer.dead_letters.list()
    assert EMAIL not in json.dumps(letter.envelope)
    mailer.dead_letters.replay(letter.id)
    [(_, body)] = waiting(mailer)
    assert json.loads(body)[0][0]["data"]["email"] == letter.envelope["data"]["email"]
    HandlerRunner().work(mailer)
    assert seen[-1].data == DATA


def test_encryption_counts_against_max_event_size(buses: list[EventBus]) -> None:
    shop, mailer, _ = shop_and_mailer(buses, {"k1": OLD}, {"k1": OLD})
    small = make_bus(buses, "tiny", encryption_keys={"k1": OLD}, max_event_size=200)
    small.declare("user.registered", sensitive=["email"])
    with pytest.raises(EventTooLarge):
        small.publish("user.registered", {"email": "x" * 120})
    assert waiting(mailer) == []


def test_celery_inspect_lists_a_waiting_delivery_by_its_masked_argument_text(
    buses: list[EventBus],
) -> None:
    from kombu.utils.imports import symbol_by_name

    shop, mailer, _ = shop_and_mailer(buses)
    shop.publish("user.registered", DATA)
    task = mailer.app.tasks["mailer.append"]
    with mailer.app.connection_for_read() as connection:
        message = connection.default_channel.basic_get(mailer.default_queue)
        request = symbol_by_name(task.Request)(message, app=mailer.app, task=task)
        # What `celery inspect reserved` and `scheduled` return of it (they call info())
        shown = request.info()
        message.requeue()
    assert EMAIL not in str(shown["args"]) and MASK in shown["args"]
