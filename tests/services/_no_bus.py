"""A Celery app without an event bus, for the CLI's error message."""

from celery import Celery

app = Celery("plain", broker="redis://127.0.0.1:1/0")
