"""The outbox keeps an event's extensions, subject and dataschema (PostgreSQL), and rows from
before the column (migration 0002) read as events without them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from django.db import connections, transaction
from django.db.migrations.executor import MigrationExecutor
from django.test import override_settings

from celery_events import Event
from celery_events.contrib.django.models import OutboxEvent
from celery_events.contrib.django.outbox import OutboxRelay

from .conftest import BOTH
from .helpers import queued_envelopes
from .settings import CELERY_EVENTS
from .warehouse.models import Order

QUEUE = "events.warehouse"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
EXTENSIONS = {"traceparent": TRACEPARENT, "priority": 3, "sampled": False, "tenant": "åcme"}

pytestmark = [
    pytest.mark.django_db(transaction=True, databases=BOTH),
    pytest.mark.integration,
]


@pytest.fixture(autouse=True)
def outbox_in_postgres() -> Iterator[None]:
    with override_settings(CELERY_EVENTS={**CELERY_EVENTS, "outbox": True, "database": "pg"}):
        yield


def test_the_outbox_row_keeps_the_extensions_and_the_relay_sends_them(
    bus, redis_client: redis.Redis
) -> None:
    # When an event with extensions is published in the caller's transaction
    with transaction.atomic(using="pg"):
        order = Order.objects.create(reference="X-1")
        result = bus.publish(
            "order.placed",
            {"order_id": order.pk, "note": "é ☃"},
            extensions=EXTENSIONS,
            subject=f"order/{order.pk}",
            dataschema="https://schemas.example.com/order-placed/1.json",
        )
    assert result.deferred and result.event.extensions == EXTENSIONS

    # Then its row holds them, read back with their JSON types
    [row] = OutboxEvent.objects.using("pg").all()
    assert row.extensions == EXTENSIONS
    assert (row.subject, row.dataschema) == (result.event.subject, result.event.dataschema)
    assert row.to_event() == result.event

    # And the relay sends the very envelope publish() returned, extensions included
    assert OutboxRelay(bus).relay_once() == 1
    envelopes = queued_envelopes(redis_client, QUEUE)
    assert envelopes and all(e == result.event.to_envelope() for e in envelopes)
    assert Event.from_envelope(envelopes[0]).extensions == EXTENSIONS


def insert_old_row(event_id: str) -> None:
    """A row as the previous version writes it: without the new columns."""
    with connections["pg"].cursor() as cursor:
        cursor.execute(
            "INSERT INTO celery_events_outbox (event_id, name, source, time, correlation_id,"
            " causation_id, data, created_at, attempts, last_error) VALUES (%s, 'order.placed',"
            " 'warehouse', '2026-01-02T03:04:05.123456Z', %s, NULL, '{\"order_id\": 1}', now(),"
            " 0, '')",
            [event_id, event_id],
        )


def test_rows_from_before_the_migration_and_from_an_old_process_read_without_extensions(
    bus, redis_client: redis.Redis
) -> None:
    connection = connections["pg"]
    executor = MigrationExecutor(connection)
    [latest] = [key for key in executor.loader.graph.leaf_nodes() if key[0] == "celery_events"]
    # Given a row written before migration 0002
    executor.migrate([("celery_events", "0001_initial")])
    try:
        insert_old_row("before-the-column")
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate([latest])
    # And one written after it by a process that does not know the new columns
    insert_old_row("old-process")

    # Then both read as events without extensions, subject or dataschema
    rows = {row.event_id: row for row in OutboxEvent.objects.using("pg").all()}
    assert rows["before-the-column"].extensions == {}
    assert rows["old-process"].extensions is None
    for row in rows.values():
        event = row.to_event()
        assert event.extensions == {} and event.subject is None and event.dataschema is None

    # And the relay sends them as the previous version did
    assert OutboxRelay(bus).relay_once() == 2
    envelopes = queued_envelopes(redis_client, QUEUE)
    assert {e["id"] for e in envelopes} == {"before-the-column", "old-process"}
    assert all(
        set(e) == {"specversion", "id", "type", "source", "time", "datacontenttype",
                   "correlationid", "causationid", "data"}
        for e in envelopes
    )


def test_a_row_whose_stored_extensions_break_the_rules_is_marked_failed(
    bus, redis_client: redis.Redis
) -> None:
    # Given a stored event whose extensions were edited into something no subscriber reads
    event = bus.new_event("order.placed", {"order_id": 1})
    row = OutboxEvent.from_event(event, '{"order_id": 1}')
    row.extensions = {"Bad Name": 1.5}
    row.save(using="pg")
    # When the relay runs, it keeps the row as failed, with the rule it breaks
    assert OutboxRelay(bus).relay_once() == 0
    row.refresh_from_db(using="pg")
    assert row.failed_at is not None and row.sent_at is None
    assert "'Bad Name'" in row.last_error
    assert redis_client.llen(QUEUE) == 0
