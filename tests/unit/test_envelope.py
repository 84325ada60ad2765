import json
from datetime import datetime, timezone

import pytest

from celery_events import Event, EventTooLarge, InvalidEnvelope, InvalidEventData
from celery_events.envelope import encode_data


def test_a_new_event_starts_its_own_correlation_chain() -> None:
    event = Event.create("user.registered", {"user_id": 7}, source="users")
    assert event.correlation_id == event.id
    assert event.causation_id is None
    assert event.time.tzinfo is not None


def test_the_envelope_has_the_cloudevents_attributes_and_round_trips() -> None:
    event = Event.create(
        "user.registered",
        {"user_id": 7},
        source="users",
        correlation_id="corr",
        causation_id="cause",
        time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
    )
    envelope = json.loads(json.dumps(event.to_envelope()))
    assert envelope == {
        "specversion": "1.0",
        "id": event.id,
        "type": "user.registered",
        "source": "users",
        "time": "2026-01-02T03:04:05Z",
        "datacontenttype": "application/json",
        "correlationid": "corr",
        "causationid": "cause",
        "data": {"user_id": 7},
    }
    assert Event.from_envelope(envelope) == event


@pytest.mark.parametrize(
    ("envelope", "message"),
    [
        ("text", "JSON object"),
        ({"id": "1"}, "lacks"),
        (
            {"id": "1", "type": "a", "source": "s", "time": "x", "specversion": "0.3", "data": {}},
            "specversion",
        ),
        (
            {"id": "1", "type": "A!", "source": "s", "time": "2026-01-01T00:00:00Z",
             "specversion": "1.0", "data": {}},
            "type",
        ),
        (
            {"id": "1", "type": "a", "source": "s", "time": "2026-01-01T00:00:00Z",
             "specversion": "1.0", "data": [1]},
            "data",
        ),
        (
            {"id": "1", "type": "a", "source": "s", "time": "yesterday",
             "specversion": "1.0", "data": {}},
            "time",
        ),
        (
            {"id": "", "type": "a", "source": "s", "time": "2026-01-01T00:00:00Z",
             "specversion": "1.0", "data": {}},
            "'id'",
        ),
    ],
)
def test_invalid_envelopes_raise_a_typed_error(envelope: object, message: str) -> None:
    with pytest.raises(InvalidEnvelope, match=message):
        Event.from_envelope(envelope)


@pytest.mark.parametrize("data", [[1, 2], "text", 3, None])
def test_data_must_be_a_json_object(data: object) -> None:
    with pytest.raises(InvalidEventData, match="must be a dict"):
        encode_data("user.registered", data, 1000)


@pytest.mark.parametrize("data", [{"when": datetime.now()}, {"x": float("nan")}, {"s": {1, 2}}])
def test_data_json_cannot_encode_is_refused(data: dict[str, object]) -> None:
    with pytest.raises(InvalidEventData, match="cannot be encoded as JSON"):
        encode_data("user.registered", data, 1000)


def test_data_over_the_size_limit_is_refused() -> None:
    with pytest.raises(EventTooLarge, match="max_event_size of 100 bytes"):
        encode_data("user.registered", {"blob": "x" * 200}, 100)
    assert encode_data("user.registered", {"blob": "x"}, 100) == '{"blob": "x"}'


def test_a_copy_with_fields_changed_is_what_dataclasses_replace_makes() -> None:
    import dataclasses

    from celery_events._frozen import copied

    event = Event.create("order.placed", {"n": 1}, source="shop", extensions={"tenant": "acme"})
    changed = {"data": {"n": 2}, "subject": "orders/7"}
    assert copied(event, Event, **changed) == dataclasses.replace(event, **changed)
    assert event.data == {"n": 1} and event.subject is None  # the original is left as it was

    @dataclasses.dataclass(frozen=True)
    class Checked(Event):
        def __post_init__(self) -> None:
            super().__post_init__()
            if self.subject == "refused":
                raise ValueError("refused")

    special = Checked(*(getattr(event, f.name) for f in dataclasses.fields(Event)))
    # A subclass goes through dataclasses.replace, its own checks included
    with pytest.raises(ValueError, match="refused"):
        copied(special, Event, subject="refused")
