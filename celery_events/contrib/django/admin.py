"""Read-only admin views of the outbox and the inbox."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import InboxEntry, OutboxEvent


class _ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(OutboxEvent)
class OutboxEventAdmin(_ReadOnlyAdmin):
    list_display = ("id", "name", "event_id", "created_at", "sent_at", "failed_at", "attempts")
    list_filter = ("name", ("sent_at", admin.EmptyFieldListFilter), "failed_at")
    search_fields = ("event_id", "name", "correlation_id")
    date_hierarchy = "created_at"


@admin.register(InboxEntry)
class InboxEntryAdmin(_ReadOnlyAdmin):
    list_display = ("id", "handler", "event_name", "event_id", "handled_at")
    list_filter = ("handler", "event_name")
    search_fields = ("event_id", "handler")
    date_hierarchy = "handled_at"
