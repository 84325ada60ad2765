"""Dead-letter records that cannot be read, and replays that would go where the service does
not listen, against a real Redis: nobody's list, show, count or purge breaks, nothing unsafe is
replayed."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from celery_events import Event, EventBus, ReplayError
from celery_events.deadletters import FORMAT, DeadLetter, Reason, new_letter

RECORDS = "celery_events:dead:orders"
INDEX = "celery_events:dead:orders:index"


@pytest.fixture
def bus(redis_url: str) -> Iterator[EventBus]:
    """The orders service's bus, with one handler on its own queue."""
    bus = EventBus(Celery("orders", broker=redis_url), service="orders")
    bus.subscribe("user.*", queue="events.orders.welcome")(welcome)
    yield bus
    bus.close()


def welcome(event: Event) -> None: ...


def good_envelope() -> dict[str, object]:
    return Event.create("user.registered", {"user_id": 7}, source="users").to_envelope()


def letter(**fields: object) -> DeadLetter:
    made = new_letter(
        service="orders",
        reason=Reason.RETRIES_EXHAUSTED,
        error=ValueError("boom"),
        handler="orders.welcome",
        envelope=good_envelope(),
        attempts=4,
        queue="events.orders.welcome",
    )
    return DeadLetter(**{**made.__dict__, **fields})


def stored(letter: DeadLetter, **changes: object) -> bytes:
    record = {**letter.to_json(), **changes}
    return json.dumps({k: v for k, v in record.items() if v is not ...}).encode()


def put(client: redis.Redis, id: str, raw: bytes, at: float = 1000.0) -> None:
    client.hset(RECORDS, id, raw)
    client.zadd(INDEX, {id: at})


def unreadable_records(template: DeadLetter) -> dict[str, bytes]:
    def of(id: str, **changes: object) -> bytes:
        return stored(DeadLetter(**{**template.__dict__, "id": id}), **changes)

    return {
        "not-json": b"\x80\x81 {half a record",
        "a-list": b'["orders.welcome"]',
        "lacks-reason": of("lacks-reason", reason=...),
        "attempts-text": of("attempts-text", attempts="4"),
        "envelope-text": of("envelope-text", envelope="{}"),
        "handler-number": of("handler-number", handler=5),
        "time-text": of("time-text", last_failed_at="yesterday"),
        "raw-not-base64": of("raw-not-base64", raw_base64="***"),
        "newer-format": of("newer-format", format=FORMAT + 1, new_field={"x": 1}),
        "format-text": of("format-text", format="2"),
        "wrong-id": of("someone-else"),
        "deep": b"[" * 5000 + b"]" * 5000,
    }


def test_unreadable_records_are_listed_shown_counted_and_purged_like_any_other(
    bus: EventBus, redis_client: redis.Redis
) -> None:
    # Given one good dead letter, and beside it records a hand edit, a bug or a newer version
    # could leave
    store = bus.dead_letters
    good = store.add(letter())
    bad = unreadable_records(good)
    for at, (id, raw) in enumerate(bad.items()):
        put(redis_client, id, raw, at=1000.0 + at)

    # When they are listed, shown and counted
    listed = {lt.id: lt for lt in store.list(limit=None)}

    # Then the good one reads as before and each bad one is a letter holding the stored bytes
    assert listed[good.id] == good
    assert store.count() == len(bad) + 1 == len(listed)
    for id, raw in bad.items():
        shown = store.get(id)
        assert shown == listed[id]
        assert shown.reason == Reason.UNREADABLE_RECORD and shown.raw == raw
        assert shown.handler is None and shown.envelope is None
        assert "cannot be read" in shown.error_message
    assert listed["newer-format"].last_failed_at == 1000.0 + list(bad).index("newer-format")
    assert f"format {FORMAT + 1}, written by a newer celery-events" in listed["newer-format"].error_message
    assert "attempts is '4'" in listed["attempts-text"].error_message
    assert "lacks the field(s) reason" in listed["lacks-reason"].error_message
    assert store.list(reason=Reason.UNREADABLE_RECORD, limit=None).__len__() == len(bad)

    # And replaying one is refused, and replaying all refuses before sending any
    with pytest.raises(ReplayError, match="not-json cannot be replayed"):
        store.replay("not-json")
    with pytest.raises(ReplayError):
        store.replay()
    assert store.get(good.id) == good
    assert redis_client.llen("events.orders.welcome") == 0

    # And purge removes them, one by id or all by reason
    assert store.purge("deep") == 1
    assert store.purge(reason=Reason.UNREADABLE_RECORD) == len(bad) - 1
    assert [lt.id for lt in store.list()] == [good.id]
    assert redis_client.hlen(RECORDS) == 1


def test_records_are_written_with_their_format_and_unknown_fields_of_it_are_kept(
    bus: EventBus, redis_client: redis.Redis
) -> None:
    good = bus.dead_letters.add(letter())
    assert json.loads(redis_client.hget(RECORDS, good.id))["format"] == FORMAT
    # A record of this format with a field this version does not know (a newer minor release)
    put(redis_client, "later", stored(letter(id="later"), note="added later"))
    read = bus.dead_letters.get("later")
    assert read.reason == Reason.RETRIES_EXHAUSTED and read.extra == {"note": "added later"}
    # A record written before formats existed reads as format 1
    put(redis_client, "older", stored(letter(id="older"), format=...))
    assert bus.dead_letters.get("older").reason == Reason.RETRIES_EXHAUSTED


@pytest.mark.parametrize(
    "envelope",
    [
        {k: v for k, v in good_envelope().items() if k != "id"},
        {k: v for k, v in good_envelope().items() if k != "type"},
        {**good_envelope(), "type": "Not A Name"},
        {**good_envelope(), "data": [1, 2]},
        {**good_envelope(), "specversion": "0.3"},
    ],
    ids=["no-id", "no-type", "bad-type", "data-a-list", "old-specversion"],
)
def test_a_stored_envelope_that_is_not_a_valid_event_is_refused(
    bus: EventBus, redis_client: redis.Redis, envelope: dict[str, object]
) -> None:
    broken = bus.dead_letters.add(letter(envelope=envelope))
    with pytest.raises(ReplayError, match="its envelope is not a valid event"):
        bus.dead_letters.replay(broken.id)
    assert bus.dead_letters.get(broken.id) == broken
    assert redis_client.llen("events.orders.welcome") == 0


def test_a_replay_goes_to_the_handler_s_own_queue_whatever_the_record_says(
    bus: EventBus, redis_client: redis.Redis
) -> None:
    # Given a dead letter whose stored queue was edited to another service's queue
    edited = bus.dead_letters.add(letter(queue="events.billing"))

    # When it is replayed
    bus.dead_letters.replay(edited.id)

    # Then the delivery goes to the queue of the handler's subscription only
    assert redis_client.llen("events.billing") == 0
    [raw] = redis_client.lrange("events.orders.welcome", 0, -1)
    message = json.loads(raw)
    assert message["headers"]["task"] == "orders.welcome"
    assert json.loads(base64.b64decode(message["body"]))[0][0]["id"] == edited.event_id


@pytest.mark.parametrize("handler", ["billing.charge", "celery.backend_cleanup", "orders.nope"])
def test_a_replay_to_a_handler_the_service_does_not_subscribe_is_refused(
    bus: EventBus, redis_client: redis.Redis, handler: str
) -> None:
    edited = bus.dead_letters.add(letter(handler=handler))
    with pytest.raises(ReplayError, match=f"{handler!r} is not a handler that service 'orders'"):
        bus.dead_letters.replay(edited.id)
    assert bus.dead_letters.get(edited.id) == edited
    assert redis_client.llen("events.orders.welcome") == 0


def test_an_operator_s_bus_without_handlers_replays_to_the_registry_s_subscriptions(
    bus: EventBus, redis_client: redis.Redis, redis_url: str
) -> None:
    # Given the orders service registered, and an operator's bus of it that declares no handler
    bus.register()
    shell = EventBus(Celery("orders-ops", broker=redis_url), service="orders")
    try:
        allowed = shell.dead_letters.add(letter(queue="events.elsewhere"))
        refused = shell.dead_letters.add(letter(handler="orders.other"))
        # Then a handler the registry lists is replayed to its registered queue, no other
        shell.dead_letters.replay(allowed.id)
        assert redis_client.llen("events.orders.welcome") == 1
        assert redis_client.llen("events.elsewhere") == 0
        with pytest.raises(ReplayError, match="subscribes in the registry"):
            shell.dead_letters.replay(refused.id)
    finally:
        shell.close()
