"""A second subscriber, on exact names and a '#' pattern."""

from celery import Celery

from celery_events import Event, EventBus

from ._effects import broker_url, record

app = Celery("mailer", broker=broker_url())
bus = EventBus(app, service="mailer")


@bus.subscribe("user.registered")
def send_welcome(event: Event) -> None:
    record("mailer.send_welcome", event)


@bus.subscribe("order.#")
def order_mail(event: Event) -> None:
    record("mailer.order_mail", event)
