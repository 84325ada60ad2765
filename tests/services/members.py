"""A subscriber of sensitive events: its handlers record digests of what they got, never the
clear values (so that the test's scan of Redis finds none), and its log carries the argument
text of Celery's log records (as a structured log handler would ship it).

MEMBERS_KEYS names a directory of ``{key_id}.aes`` files (the encryption keys), MEMBERS_KEY_ID
the one that encrypts (optional).
"""

import hashlib
import json
import logging
import os
from typing import Any

import redis
from celery import Celery, signals

from celery_events import Event, EventBus

from ._effects import EFFECTS_KEY, broker_url

app = Celery("members", broker=broker_url())
bus = EventBus(
    app,
    service="members",
    encryption_keys=os.environ.get("MEMBERS_KEYS") or None,
    encryption_key_id=os.environ.get("MEMBERS_KEY_ID") or None,
)


def digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()


def _record(handler: str, event: Event) -> None:
    redis.Redis.from_url(broker_url()).rpush(
        EFFECTS_KEY,
        json.dumps(
            {
                "handler": handler,
                "event_id": event.id,
                "digests": {key: digest(value) for key, value in event.data.items()},
            }
        ),
    )


@bus.subscribe("user.registered")
def welcome(event: Event) -> None:
    _record("members.welcome", event)


@bus.subscribe("user.deleted", max_retries=0)
def forget(event: Event) -> None:
    raise RuntimeError("the archive is read-only")


# The publisher declares nothing sensitive for user.updated: this subscriber masks the phone.
@bus.subscribe(
    "user.updated", sensitive=["phone"], max_retries=1, retry_backoff=3, retry_jitter=False
)
def update(event: Event) -> None:
    attempt = redis.Redis.from_url(broker_url()).incr(f"test:members:attempts:{event.id}")
    if attempt <= event.data.get("failures", 0):
        raise ConnectionError(f"directory busy (attempt {attempt})")
    _record("members.update", event)


class _Arguments(logging.Handler):
    """Writes the ``args`` Celery passes with its log records (``extra={"data": ...}``)."""

    def emit(self, record: logging.LogRecord) -> None:
        data: Any = getattr(record, "data", None)
        if isinstance(data, dict) and "args" in data:
            print(f"logged args: {data['args']}", flush=True)


@signals.after_setup_logger.connect
def _log_arguments(logger: logging.Logger, **kwargs: Any) -> None:
    logger.addHandler(_Arguments())
