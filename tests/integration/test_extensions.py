"""CloudEvents extension attributes end to end, with real workers on a real Redis: the handler
sees them, and so do Celery's retries, dead letters and their replay, the lost-delivery
sweeper, and events the official CloudEvents SDK wrote."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import redis
from celery import Celery
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from celery_events import Event, EventBus, PublishResult
from celery_events._messages import build_messages, encode_body, redis_payload

from ..harness import wait_until
from .conftest import effects
from .test_fast_path import assert_same_message, send_task_like

EXTENDED = "tests.services.extended"
QUEUE = "events.extended"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
EXTENSIONS = {"traceparent": TRACEPARENT, "priority": 3, "sampled": True, "tenant": "åcme ☃"}
TYPES = {"traceparent": "str", "priority": "int", "sampled": "bool", "tenant": "str"}


def seen(client: redis.Redis, event_id: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        e for e in effects(client)
        if e.get("handler") == "extended.keep" and e["id"] == event_id
        and (name is None or e["name"] == name)
    ]


def handled_once(client: redis.Redis, result: PublishResult) -> dict[str, Any]:
    [effect] = wait_until(lambda: seen(client, result.event.id), timeout=30)
    return effect


def ops_bus(redis_url: str) -> EventBus:
    """The extended service's bus as an operator's shell would hold it."""
    return EventBus(Celery("extended-ops", broker=redis_url), service="extended")


def publish(publisher: EventBus, data: dict[str, Any]) -> PublishResult:
    return publisher.publish(
        "ext.placed",
        data,
        extensions=EXTENSIONS,
        subject="order/7",
        dataschema="https://schemas.example.com/ext-placed/1.json",
    )


def assert_sees(effect: dict[str, Any], event: Event) -> None:
    assert effect["extensions"] == EXTENSIONS and effect["extension_types"] == TYPES
    assert effect["subject"] == event.subject == "order/7"
    assert effect["dataschema"] == event.dataschema
    assert effect["time"] == event.time.isoformat()
    assert (effect["correlation_id"], effect["causation_id"]) == (
        event.correlation_id, event.causation_id
    )
    assert effect["data"] == event.data


def test_a_handler_sees_the_extensions_it_was_published_with_and_a_new_event_does_not_inherit(
    start_worker, publisher: EventBus, redis_client: redis.Redis
) -> None:
    start_worker(EXTENDED)
    result = publish(publisher, {"name": "Zoë", "follow": True})
    assert_sees(handled_once(redis_client, result), result.event)

    # The event its handler published carries its correlation and cause, and its own extensions
    [followed] = wait_until(
        lambda: [e for e in effects(redis_client) if e["name"] == "ext.followed"], timeout=30
    )
    assert followed["correlation_id"] == result.event.correlation_id
    assert followed["causation_id"] == result.event.id
    assert followed["extensions"] == {"step": 2} and followed["subject"] is None


def test_a_retried_delivery_keeps_its_extensions(
    start_worker, publisher: EventBus, redis_client: redis.Redis
) -> None:
    start_worker(EXTENDED)
    result = publish(publisher, {"fail_times": 2})
    effect = handled_once(redis_client, result)
    assert effect["retries"] == 2  # Celery's own retries of the same delivery
    assert_sees(effect, result.event)


def test_a_dead_letter_keeps_the_extensions_and_its_replay_delivers_them(
    start_worker, publisher: EventBus, redis_client: redis.Redis, redis_url: str
) -> None:
    start_worker(EXTENDED)
    # Given a delivery its handler rejects
    event = publisher.new_event(
        "ext.placed", {"reject": True}, extensions=EXTENSIONS, subject="order/7",
        dataschema="https://schemas.example.com/ext-placed/1.json",
    )
    redis_client.set(f"test:extended:reject:{event.id}", 1)
    publisher.publish_event(event)
    ops = ops_bus(redis_url)
    wait_until(lambda: ops.dead_letters.count() == 1, timeout=30)

    # Then the dead letter keeps the envelope with its extensions
    [letter] = ops.dead_letters.list()
    assert letter.reason == "rejected" and letter.envelope is not None
    assert {k: letter.envelope[k] for k in EXTENSIONS} == EXTENSIONS
    assert Event.from_envelope(letter.envelope) == event

    # When it is replayed, the handler sees them
    redis_client.delete(f"test:extended:reject:{event.id}")
    ops.dead_letters.replay(letter.id)
    [effect] = wait_until(lambda: seen(redis_client, event.id), timeout=30)
    assert_sees(effect, event)
    ops.close()


def test_a_lost_delivery_sent_again_by_the_sweeper_keeps_its_extensions(
    start_worker, publisher: EventBus, redis_client: redis.Redis
) -> None:
    # Given a delivery that vanished from its queue before any worker recorded it
    start_worker(EXTENDED).stop()
    result = publish(publisher, {})
    assert redis_client.lpop(QUEUE) is not None and redis_client.llen(QUEUE) == 0

    # When the service's worker runs, its sweeper sends it again from the ledger
    worker = start_worker(EXTENDED)
    effect = handled_once(redis_client, result)
    assert "lost delivery(ies) of service 'extended' again" in worker.log()
    assert_sees(effect, result.event)


def delivery_of(app: Celery, envelope: dict[str, Any], task_name: str = "extended.keep") -> str:
    """A delivery of ``envelope`` as any producer writing Celery's protocol 2 would queue it."""
    head = {k: v for k, v in envelope.items() if k != "data"}
    [message] = build_messages(
        app, envelope, encode_body(head, json.dumps(envelope["data"])),
        [(task_name, QUEUE, f"{envelope['type']} → {task_name}", "extended")],
        parent_id=None, root_id=None,
    )
    return redis_payload(message)


def test_an_envelope_with_an_invalid_extension_is_a_dead_letter_and_the_worker_lives_on(
    start_worker, publisher: EventBus, redis_client: redis.Redis, redis_url: str
) -> None:
    worker = start_worker(EXTENDED)
    envelope = Event.create("ext.placed", {}, source="elsewhere").to_envelope()
    bad = {**envelope, "Trace_Parent": TRACEPARENT, "priority": 1.5}
    redis_client.lpush(QUEUE, delivery_of(publisher.app, bad))

    ops = ops_bus(redis_url)
    wait_until(lambda: ops.dead_letters.count() == 1, timeout=30)
    [letter] = ops.dead_letters.list()
    assert letter.reason == "invalid_envelope" and letter.handler == "extended.keep"
    assert letter.envelope == bad
    assert "'Trace_Parent'" in letter.error_message
    assert "lowercase ASCII letters and digits" in letter.error_message

    after = publish(publisher, {})
    handled_once(redis_client, after)
    assert worker.process.poll() is None
    ops.close()


def sdk_json() -> tuple[CloudEvent, dict[str, Any]]:
    sdk = CloudEvent(
        {
            "type": "ext.placed",
            "source": "https://shop.example.com/orders",
            "time": datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=timezone(timedelta(hours=2))),
            "subject": "order/7",
            "dataschema": "https://schemas.example.com/ext-placed/1.json",
            **EXTENSIONS,
        },
        {"name": "Zoë \"quoted\" ☃", "items": [1, 2.5, None]},
    )
    return sdk, json.loads(JSONFormat().write(sdk))


def assert_sees_sdk_event(effect: dict[str, Any], sdk: CloudEvent) -> None:
    assert effect["id"] == sdk.get_id() and effect["name"] == sdk.get_type()
    assert effect["source"] == sdk.get_source()
    assert effect["time"] == sdk.get_time().isoformat()  # type: ignore[union-attr]
    assert (effect["subject"], effect["dataschema"]) == (sdk.get_subject(), sdk.get_dataschema())
    assert effect["extensions"] == EXTENSIONS and effect["extension_types"] == TYPES
    assert effect["correlation_id"] == sdk.get_id() and effect["causation_id"] is None
    assert effect["data"] == sdk.get_data()


def test_an_event_the_cloudevents_sdk_wrote_reaches_a_handler_unchanged(
    start_worker, publisher: EventBus, redis_client: redis.Redis
) -> None:
    start_worker(EXTENDED)
    # Given an event the SDK wrote, queued as it is by a producer of another stack
    sdk, envelope = sdk_json()
    assert "datacontenttype" not in envelope and envelope["time"].endswith("+02:00")
    redis_client.lpush(QUEUE, delivery_of(publisher.app, envelope))
    # Then the handler sees every attribute the SDK wrote
    [effect] = wait_until(lambda: seen(redis_client, sdk.get_id()), timeout=30)
    assert_sees_sdk_event(effect, sdk)

    # And one the SDK wrote and a service publishes on (a bridge) arrives unchanged too
    bridged, envelope = sdk_json()
    publisher.publish_event(Event.from_envelope(envelope))
    [effect] = wait_until(lambda: seen(redis_client, bridged.get_id()), timeout=30)
    assert_sees_sdk_event(effect, bridged)


def test_a_delivery_with_extensions_is_byte_for_byte_what_send_task_sends(
    start_worker, publisher: EventBus, redis_client: redis.Redis
) -> None:
    start_worker(EXTENDED).stop()
    result = publish(publisher, {"name": "Zoë's \"quoted\""})
    ours = redis_client.lpop(QUEUE)
    send_task_like(publisher.app, ours, result.event.to_envelope())
    assert_same_message(ours, redis_client.lpop(QUEUE))


def test_the_largest_event_publish_allows_passes_the_subscribers_screen(
    start_worker, publisher: EventBus, redis_client: redis.Redis
) -> None:
    # Given data of max_event_size and extensions, subject and schema filling their budget,
    # in characters that take 6 bytes each on the wire
    from celery_events._attributes import MAX_ATTRIBUTES_SIZE

    start_worker(EXTENDED)
    limit = publisher.settings.max_event_size
    data = {"blob": "x" * (limit - len('{"blob": ""}'))}
    extensions = {f"sig{i}": "é" * 100 for i in range(12)}
    subject = "☃" * ((MAX_ATTRIBUTES_SIZE - len(json.dumps(extensions)) - 20) // 6 - 60)
    result = publisher.publish("ext.placed", data, extensions=extensions, subject=subject)
    # Then the handler gets it
    effect = handled_once(redis_client, result)
    assert effect["extensions"] == extensions and effect["subject"] == subject
    assert len(effect["data"]["blob"]) == len(data["blob"])
