"""The orders service's Celery app and event bus.

Run the worker with ``celery -A orders.celery worker`` (from the directory holding ``orders``).
"""

from __future__ import annotations

import os

import django
from celery import Celery

from celery_events import EventBus

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orders.settings")
django.setup()

from django.conf import settings  # noqa: E402  (after django.setup())

app = Celery("orders", broker=settings.CELERY_BROKER_URL)
bus = EventBus(app, service="orders")

from . import subscribers  # noqa: E402, F401  (registers the handlers on the bus)
