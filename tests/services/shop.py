"""A publisher-only service: it never imports the subscribers."""

from celery import Celery

from celery_events import EventBus

from ._effects import broker_url

app = Celery("shop", broker=broker_url())
bus = EventBus(app, service="shop")
