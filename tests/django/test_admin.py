"""The admin shows outbox and inbox rows, read-only."""

from __future__ import annotations

from html import escape

import pytest

from celery_events import Event
from celery_events.contrib.django.models import InboxEntry, OutboxEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def rows() -> tuple[OutboxEvent, InboxEntry]:
    event = Event.create("order.placed", {"order_id": 1}, source="warehouse")
    outbox = OutboxEvent.from_event(event, '{"order_id": 1}')
    outbox.save()
    inbox = InboxEntry.objects.create(
        event_id=event.id, handler="warehouse.ship", event_name="order.placed"
    )
    return outbox, inbox


def test_the_lists_and_the_rows_can_be_viewed(admin_client, rows) -> None:
    outbox, inbox = rows
    listing = admin_client.get("/admin/celery_events/outboxevent/")
    assert listing.status_code == 200 and outbox.event_id in listing.text
    listing = admin_client.get("/admin/celery_events/inboxentry/")
    assert listing.status_code == 200 and "warehouse.ship" in listing.text
    detail = admin_client.get(f"/admin/celery_events/outboxevent/{outbox.pk}/change/")
    assert detail.status_code == 200 and escape('{"order_id": 1}') in detail.text
    assert 'name="_save"' not in detail.text  # nothing to save: read-only


def test_rows_cannot_be_added_changed_or_deleted(admin_client, rows) -> None:
    outbox, inbox = rows
    assert admin_client.get("/admin/celery_events/outboxevent/add/").status_code == 403
    changed = admin_client.post(
        f"/admin/celery_events/inboxentry/{inbox.pk}/change/", {"handler": "x"}
    )
    assert changed.status_code == 403
    deleted = admin_client.post(
        f"/admin/celery_events/outboxevent/{outbox.pk}/delete/", {"post": "yes"}
    )
    assert deleted.status_code == 403
    assert OutboxEvent.objects.count() == 1 and InboxEntry.objects.get().handler == "warehouse.ship"
