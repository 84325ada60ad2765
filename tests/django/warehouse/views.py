"""A view of the test project that uses the project's bus imported at the top of its module, as
a Django user writes it: ``manage.py check`` imports it with the URLconf, a broken
CELERY_EVENTS included (tests/django/test_startup.py)."""

from django.http import HttpRequest, JsonResponse

from celery_events.contrib.django import bus


def place_order(request: HttpRequest) -> JsonResponse:
    result = bus.publish("order.placed", {"order_id": int(request.GET["order_id"])})
    return JsonResponse({"deferred": result.deferred, "handlers": sorted(d.handler for d in result.deliveries)})
