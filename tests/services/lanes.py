"""A service with two handlers of one event on two queues, for the workers' -Q and -X
(tests/integration/test_worker_queues.py): ``fast`` on the service's queue ``events.lanes``,
``slow`` on a queue of its own, ``events.lanes.slow``. Each run is recorded in ``test:effects``.
"""

import json
import os

import redis
from celery import Celery

from celery_events import Event, EventBus

app = Celery("lanes", broker=os.environ["CELERY_EVENTS_TEST_BROKER"])
# Plain tasks on a queue of their own: Celery's default 'celery' is shared by every app.
app.conf.task_default_queue = "lanes.tasks"
bus = EventBus(app, service="lanes")
effects = redis.Redis.from_url(os.environ["CELERY_EVENTS_TEST_BROKER"])


@bus.subscribe("lane.ping")
def fast(event: Event) -> None:
    effects.rpush("test:effects", json.dumps({"handler": "fast", "event_id": event.id}))


@bus.subscribe("lane.ping", queue="events.lanes.slow")
def slow(event: Event) -> None:
    effects.rpush("test:effects", json.dumps({"handler": "slow", "event_id": event.id}))
