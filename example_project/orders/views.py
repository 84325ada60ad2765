"""The orders service's read-only HTTP API."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from .models import Order


def list_orders(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"orders": [order.as_dict() for order in Order.objects.order_by("id")]})


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})
