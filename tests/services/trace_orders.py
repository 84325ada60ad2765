"""The second service of the traced chain: opens a cart for each registered user, which
publishes ``order.created`` from inside its handler (so the new event names its cause and
keeps the conversation's correlation id), and refuses users its fraud check flags."""

from __future__ import annotations

from celery import Celery

from celery_events import Event, EventBus, Reject

from ._effects import broker_url

app = Celery("trace_orders", broker=broker_url())
bus = EventBus(app, service="trace_orders", trace_records=True, retry_jitter=False)


@bus.subscribe("user.registered")
def open_cart(event: Event) -> None:
    bus.publish("order.created", {"order_id": event.data["user_id"] * 10})


@bus.subscribe("user.registered")
def fraud_check(event: Event) -> None:
    raise Reject("the fraud check refused the user")
