"""Notifications: e-mails and text messages sent in reaction to other services' events.

Run it with ``celery -A notifications.worker worker``. What it "sends" is appended to
``notifications.jsonl`` in the data directory, one JSON object per line, so that you (and the
demo's checks) can read what happened.

Two handlers misbehave on purpose:

- ``order_confirmation`` talks to a mail relay that times out on the first tries for some
  users (``user_id % 3`` attempts fail), so its deliveries are retried and show as RETRY in
  Flower before they succeed.
- ``goodbye_sms`` needs an SMS gateway that is switched off until the file
  ``sms-gateway-up`` exists in the data directory, so every ``user.deleted`` delivery fails,
  is retried twice and ends as a dead letter, to be inspected and replayed once the gateway is
  "fixed"::

      celery -A notifications.worker eventbus dead-letters list
      touch var/sms-gateway-up
      celery -A notifications.worker eventbus dead-letters replay --all
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from celery import Celery
from observability_config import configure_tracing, observability_settings
from trust_config import trust_settings

from celery_events import Event, EventBus

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
DATA_DIR = Path(os.environ.get("DEMO_DATA_DIR", Path(__file__).resolve().parent.parent / "var"))
SENT_LOG = DATA_DIR / "notifications.jsonl"
SMS_GATEWAY_FLAG = DATA_DIR / "sms-gateway-up"

app = Celery("notifications", broker=BROKER_URL)
# Where this process's spans go (observability_config.py): set up before the bus makes any.
configure_tracing("notifications")
# Signed events and scopes on (trust_config.py): a delivery whose signature or scope does not
# check out is a dead letter before any handler here runs. Traces, metrics on the worker's
# metrics port and trace records on (observability_config.py).
bus = EventBus(
    app,
    service="notifications",
    **trust_settings("notifications"),
    **observability_settings("notifications"),
)


class MailRelayTimeout(ConnectionError):
    """The mail relay did not answer in time; trying again later usually works."""


class SmsGatewayDown(RuntimeError):
    """The SMS gateway refuses every message until it is switched on."""


def _record(kind: str, event: Event, **details: Any) -> None:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    line = {
        "kind": kind,
        "event_id": event.id,
        "event": event.name,
        "source": event.source,
        "correlation_id": event.correlation_id,
        "causation_id": event.causation_id,
        "at": time.time(),
        **details,
    }
    with SENT_LOG.open("a", encoding="utf-8") as log:
        log.write(json.dumps(line) + "\n")


def _attempt() -> int:
    """How many times this delivery was already retried (0 on the first try)."""
    task = app.current_worker_task
    return int(task.request.retries or 0) if task is not None else 0


@bus.subscribe("user.*")
def audit_trail(event: Event) -> None:
    """Keep a line for every user event, whatever its name."""
    _record("audit", event, user_id=event.data.get("user_id"))


#: What ``order_confirmation`` reads of an ``order.created``: ``celery eventbus check`` tells
#: this service's CI if the orders service ever publishes something it cannot read.
ORDER_CONFIRMATION_READS = {
    "type": "object",
    "properties": {"order_id": {"type": "integer"}, "user_id": {"type": "integer"}},
    "required": ["order_id", "user_id"],
}


@bus.subscribe(
    "order.created",
    schema=ORDER_CONFIRMATION_READS,
    # Each retry is a RETRY of the same delivery in Flower; short waits for the demo.
    retry_for=(MailRelayTimeout,),
    max_retries=5,
    retry_backoff=0.5,
    retry_jitter=False,
)
def order_confirmation(event: Event) -> None:
    """E-mail the user that their order exists; the relay is flaky."""
    user_id = int(event.data["user_id"])
    if _attempt() < user_id % 3:
        raise MailRelayTimeout(f"mail relay timed out for order {event.data['order_id']}")
    _record(
        "email",
        event,
        user_id=user_id,
        order_id=event.data["order_id"],
        subject="Your welcome order is on its way",
    )


@bus.subscribe("user.deleted", max_retries=2, retry_backoff=0.5, retry_jitter=False)
def goodbye_sms(event: Event) -> None:
    """Text the user goodbye; fails for as long as the SMS gateway is down."""
    if not SMS_GATEWAY_FLAG.exists():
        raise SmsGatewayDown(
            f"SMS gateway is down: cannot text user {event.data['user_id']}"
            f" (create {SMS_GATEWAY_FLAG} to bring it up)"
        )
    _record("sms", event, user_id=event.data["user_id"], text="Sorry to see you go")
