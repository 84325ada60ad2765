"""The first service of the traced chain: it only publishes ``user.registered`` (the test
publishes through this app's bus), and its app is the one ``eventbus trace`` runs with."""

from __future__ import annotations

from celery import Celery

from celery_events import EventBus

from ._effects import broker_url

app = Celery("trace_users", broker=broker_url())
bus = EventBus(app, service="trace_users", trace_records=True)
