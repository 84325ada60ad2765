"""The bus and handlers of tests.services.late_bus, found through the app's `include`."""

from celery_events import Event, EventBus

from .late_bus import app

bus = EventBus(app, service="late")


@bus.subscribe("user.registered")
def greet(event: Event) -> None:
    pass
