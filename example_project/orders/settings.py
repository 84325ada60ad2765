"""Django settings of the orders service (a demo: debug on, loopback only, SQLite)."""

from __future__ import annotations

import os
from pathlib import Path

from observability_config import configure_tracing, observability_settings
from trust_config import trust_settings

DATA_DIR = Path(os.environ.get("DEMO_DATA_DIR", Path(__file__).resolve().parent.parent / "var"))
DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = "demo-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["celery_events.contrib.django", "orders"]
ROOT_URLCONF = "orders.urls"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATA_DIR / "orders.sqlite3",
        # The web process, the worker's handlers and its outbox relay share the file. Every
        # transaction takes the write lock when it begins (waiting up to 20 s for it): a
        # transaction that read first and wrote later could otherwise fail with "database is
        # locked" when another one wrote in between.
        "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_EVENTS = {
    "service": "orders",
    "app": "orders.celery.app",
    # Events published here go to an outbox table in the publishing transaction; a relay
    # thread in the orders worker sends them.
    "outbox": True,
    "relay_in_worker": True,
    "relay_interval": 0.2,
    # Signed events and scopes on (trust_config.py).
    **trust_settings("orders"),
    # Traces, metrics on the worker's metrics port, trace records (observability_config.py).
    **observability_settings("orders"),
}
# Every process that reads these settings (the web server, the worker and its pool) writes
# its spans to a file of its own (observability_config.py).
configure_tracing("orders")
# SQLite cannot skip locked rows, which only matters with several relays; this service runs
# one, in its worker.
SILENCED_SYSTEM_CHECKS = ["celery_events.W001"]
