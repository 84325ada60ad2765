"""A subscriber for the trust tests, configured from the environment.

- ``CELERY_EVENTS_TEST_BROKER``: its broker URL (a restricted Redis user in the ACL tests);
- ``GUARDED_SERVICE``: the service it runs as (default ``orders``; an impostor sets it to
  ``orders`` from another process);
- ``GUARDED_QUEUE``: the queue of its handlers (default: the service's own);
- ``GUARDED_KEYS``: a directory of ``{service}.k1.key`` files and a ``trusted/`` directory
  of public keys: it signs its registry record and requires signatures;
- ``GUARDED_NO_HANDLERS=1``: it subscribes to nothing;
- ``GUARDED_EFFECTS_URL``: where handlers record their effects (the unrestricted Redis).

Handlers: ``welcome`` (records), ``flaky`` (fails its first attempt), ``broken`` (always fails).
"""

import json
import os

import redis
from celery import Celery

from celery_events import Event, EventBus

service = os.environ.get("GUARDED_SERVICE", "orders")
name = os.environ.get("GUARDED_NAME", service)
keys = os.environ.get("GUARDED_KEYS")
settings: dict[str, object] = {
    "max_retries": 1,
    "retry_backoff": 0.05,
    "retry_backoff_max": 0.1,
    "retry_jitter": False,
    "sweep_interval": 0.5,
}
if keys:
    settings["signing_key"] = os.path.join(keys, f"{name}.k1.key")
    settings["trusted_keys"] = os.path.join(keys, "trusted")

app = Celery(name, broker=os.environ["CELERY_EVENTS_TEST_BROKER"])
# A queue of its own for plain tasks: Celery's default 'celery' is shared by every app.
app.conf.task_default_queue = f"{name}.tasks"
bus = EventBus(app, service=service, **settings)
queue = os.environ.get("GUARDED_QUEUE") or None
EFFECTS = "test:effects"


def record(handler: str, event: Event) -> None:
    client = redis.Redis.from_url(os.environ["GUARDED_EFFECTS_URL"])
    client.rpush(EFFECTS, json.dumps({"handler": handler, "event_id": event.id, "by": name}))


if not os.environ.get("GUARDED_NO_HANDLERS"):

    @bus.subscribe("user.registered", queue=queue)
    def welcome(event: Event) -> None:
        record(f"{service}.welcome", event)

    @bus.subscribe("user.flaky", queue=queue)
    def flaky(event: Event) -> None:
        client = redis.Redis.from_url(os.environ["GUARDED_EFFECTS_URL"])
        if client.incr(f"test:attempts:{event.id}") == 1:
            raise RuntimeError("first attempt fails")
        record(f"{service}.flaky", event)

    @bus.subscribe("user.broken", queue=queue)
    def broken(event: Event) -> None:
        raise RuntimeError("always fails")
