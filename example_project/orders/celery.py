"""The orders service's Celery app, as Celery's Django guide writes it.

Run the worker with ``celery -A orders.celery worker`` (from the directory holding ``orders``).
The bus is the Django integration's (``CELERY_EVENTS`` in ``orders/settings.py``); the
handlers are in ``orders/subscribers.py``, found at start-up. The worker also runs the outbox
relay (``relay_in_worker``).
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orders.settings")

app = Celery("orders")
app.config_from_object("django.conf:settings", namespace="CELERY")
