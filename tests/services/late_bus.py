"""An app whose bus is created in a module it imports at start-up, not in this one."""

from celery import Celery

from ._effects import broker_url

app = Celery("late", broker=broker_url(), include=["tests.services._late_bus_handlers"])
