"""The orders service's read-only HTTP API."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from celery_events.contrib.django.models import InboxEntry, OutboxEvent

from .models import Order


def list_orders(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"orders": [order.as_dict() for order in Order.objects.order_by("id")]})


def events(request: HttpRequest) -> JsonResponse:
    """What went through this service's outbox (published) and inbox (handled)."""
    outbox = [
        {
            "event_id": row.event_id,
            "name": row.name,
            "causation_id": row.causation_id,
            "sent_at": row.sent_at.isoformat() if row.sent_at else None,
        }
        for row in OutboxEvent.objects.order_by("id")
    ]
    inbox = [
        {"event_id": row.event_id, "handler": row.handler, "event_name": row.event_name}
        for row in InboxEntry.objects.order_by("id")
    ]
    return JsonResponse({"outbox": outbox, "inbox": inbox})


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})
