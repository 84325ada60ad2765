"""A subscriber whose middleware reports its handle scope and every notification.

``Watch`` writes one JSON record per scope entry and exit and per notification to
``test:watch`` in the broker's Redis; the handler writes one when it runs, with the event's
extension attributes, and fails, rejects or crashes once as the event's data says.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import redis
from celery import Celery

from celery_events import DeadLetter, Event, EventBus, HandlerCall, Middleware, Reject
from celery_events.middleware import HandleNext

from ._effects import broker_url

WATCH_KEY = "test:watch"

client = redis.Redis.from_url(broker_url())


def note(what: str, **fields: Any) -> None:
    client.rpush(WATCH_KEY, json.dumps({"what": what, "pid": os.getpid(), **fields}))


def details(call: HandlerCall) -> dict[str, Any]:
    return {
        "event_id": call.event.id,
        "handler": call.handler,
        "queue": call.queue,
        "task_id": call.task_id,
        "attempt": call.attempt,
        "service": call.service,
        "extensions": dict(call.event.extensions),
    }


class Watch(Middleware):
    def handle(self, call: HandlerCall, call_next: HandleNext) -> Any:
        note("enter", **details(call))
        try:
            return call_next(call)
        finally:
            note("leave", **details(call))

    def on_retry(self, call: HandlerCall, error: BaseException, countdown: float) -> None:
        note("retry", error=type(error).__name__, countdown=countdown, **details(call))

    def on_dead_letter(self, letter: DeadLetter) -> None:
        note("dead_letter", reason=letter.reason, task_id=letter.task_id, handler=letter.handler)

    def on_duplicate_skipped(self, call: HandlerCall) -> None:
        note("duplicate", **details(call))

    def on_redelivered(self, call: HandlerCall) -> None:
        note("redelivered", **details(call))

    def on_worker_start(self, bus: EventBus) -> None:
        note("worker_start", service=bus.service)

    def on_worker_stop(self, bus: EventBus) -> None:
        note("worker_stop", service=bus.service)


app = Celery("watched", broker=broker_url())
bus = EventBus(
    app,
    service="watched",
    middleware=[Watch()],
    max_retries=2,
    retry_backoff=0.05,
    retry_backoff_max=0.2,
    handler_time_limit=30,
    # The lost-delivery sweep's dead letters are notified too; sweep often enough to see one.
    sweep_interval=0.5,
)


@bus.subscribe("watch.#")
def look(event: Event) -> None:
    note("handler", event_id=event.id, extensions=dict(event.extensions))
    data = event.data
    if data.get("fail_once") and client.incr(f"test:watch:failed:{event.id}") == 1:
        raise RuntimeError("failing once")
    if data.get("reject"):
        raise Reject("not wanted")
    if data.get("crash_once") and client.incr(f"test:watch:crashed:{event.id}") == 1:
        os.kill(os.getpid(), signal.SIGKILL)
