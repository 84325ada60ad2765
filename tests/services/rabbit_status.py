"""A service on RabbitMQ with its registry on RabbitMQ too, for `celery eventbus status` in
tests/integration/amqp/test_status.py.

The broker is ``CELERY_EVENTS_TEST_BROKER`` (amqp://), inboxes and dead letters live in the
Redis of ``CELERY_EVENTS_TEST_STATE``, the management API is ``CELERY_EVENTS_TEST_MANAGEMENT``
(unset: next to the broker), and ``RABBIT_QUEUE_TYPE`` picks quorum or classic queues.
"""

from __future__ import annotations

import os

from celery import Celery

from celery_events import Event, EventBus

app = Celery("orders", broker=os.environ["CELERY_EVENTS_TEST_BROKER"])
bus = EventBus(
    app,
    service="orders",
    state_url=os.environ["CELERY_EVENTS_TEST_STATE"],
    management_url=os.environ.get("CELERY_EVENTS_TEST_MANAGEMENT") or None,
    queue_type=os.environ.get("RABBIT_QUEUE_TYPE", "quorum"),
    key_prefix=os.environ.get("CELERY_EVENTS_TEST_PREFIX", "celery_events:"),
)


@bus.subscribe("user.*")
def welcome(event: Event) -> None:
    """Never runs in these tests: no worker consumes, the deliveries wait."""
