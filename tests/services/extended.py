"""A subscriber that records every attribute of the events it handles, extensions included.

``data["fail_times"]`` makes the handler fail that many times first (Celery retries it);
``data["reject"]`` makes it reject the event into the dead letters while
``test:extended:reject:{event id}`` is set. Effects commit with the inbox record.
"""

from __future__ import annotations

import json

import redis
from celery import Celery

from celery_events import Event, EventBus, Reject

from ._effects import EFFECTS_KEY, broker_url

app = Celery("extended", broker=broker_url())
bus = EventBus(
    app,
    service="extended",
    max_retries=3,
    retry_backoff=0.05,
    retry_backoff_max=0.5,
    redelivery_timeout=2.0,
    sweep_interval=0.5,
    handler_time_limit=30,
)
client = redis.Redis.from_url(broker_url())


def attributes(event: Event) -> dict[str, object]:
    """Everything a handler sees of an event, as JSON."""
    return {
        "id": event.id,
        "name": event.name,
        "source": event.source,
        "time": event.time.isoformat(),
        "correlation_id": event.correlation_id,
        "causation_id": event.causation_id,
        "subject": event.subject,
        "dataschema": event.dataschema,
        "extensions": dict(event.extensions),
        "extension_types": {name: type(value).__name__ for name, value in event.extensions.items()},
        "data": event.data,
    }


@bus.subscribe("ext.#")
def keep(event: Event) -> None:
    if event.data.get("fail_times"):
        if client.incr(f"test:extended:failures:{event.id}") <= int(event.data["fail_times"]):
            raise ConnectionError("the downstream service is down")
    if event.data.get("reject") and client.get(f"test:extended:reject:{event.id}"):
        raise Reject("refused for now")
    task = app.current_worker_task
    seen = attributes(event)
    seen.update(handler="extended.keep", retries=task.request.retries if task else None)
    bus.redis_effects().rpush(EFFECTS_KEY, json.dumps(seen))
    if event.data.get("follow"):
        # An event published from a handler: correlation and cause inherited, extensions not.
        bus.publish("ext.followed", {}, extensions={"step": 2})
