"""A subscriber that reports what its worker saw of each delivery's Celery task request.

Its handler records the task request (headers a publish signal added, parent and root ids), and
on request publishes an event and sends the same envelope with ``app.send_task`` from inside the
worker, so that the tests can compare both messages as a handler would send them.
"""

import json

import redis
from celery import Celery

from celery_events import Event, EventBus

from ._effects import broker_url

REQUESTS_KEY = "test:requests"

app = Celery("tracer", broker=broker_url())
bus = EventBus(app, service="tracer")


@bus.subscribe("trace.*")
def inspect_request(event: Event) -> None:
    task = app.current_worker_task
    request = task.request
    client = redis.Redis.from_url(broker_url())
    client.rpush(
        REQUESTS_KEY,
        json.dumps(
            {
                "event_id": event.id,
                "task_id": request.id,
                "task": task.name,
                "trace_id": getattr(request, "trace_id", None),
                "parent_id": request.parent_id,
                "root_id": request.root_id,
            }
        ),
    )
    compare = event.data.get("compare")
    if compare:
        result = bus.publish(compare, {"from": "worker"})
        (delivery,) = result.deliveries
        # Nobody consumes the queue: the message just published is at its head.
        shadow = json.loads(client.lindex(delivery.queue, 0))["headers"]["shadow"]
        app.send_task(
            delivery.handler,
            args=[result.event.to_envelope()],
            kwargs={},
            queue=delivery.queue,
            shadow=shadow,
        )
