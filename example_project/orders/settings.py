"""Django settings of the orders service (a demo: debug on, loopback only, SQLite)."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR = Path(os.environ.get("DEMO_DATA_DIR", Path(__file__).resolve().parent.parent / "var"))
DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = "demo-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["orders"]
ROOT_URLCONF = "orders.urls"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATA_DIR / "orders.sqlite3",
        # The web process and the worker share the file; wait for each other's writes.
        "OPTIONS": {"timeout": 20},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
