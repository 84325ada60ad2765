"""A subscriber, ``fulfilment``, on events with contracts (tests/integration/test_contracts.py).

``ship`` accepts ``order.created`` v1 only, ``audit`` every version; ``welcome`` takes its data
as a pydantic model. Each run that took effect is recorded in ``test:effects`` (``welcome``'s
with the model's class name in its data). ``CONTRACTED_TRUSTED`` is its trusted_keys
directory and ``CONTRACTED_KEY`` its signing_key (unset: signing off).
"""

from __future__ import annotations

import dataclasses
import os

from celery import Celery
from pydantic import BaseModel

from celery_events import Event, EventBus

from ._effects import broker_url, record

settings: dict[str, object] = {}
if os.environ.get("CONTRACTED_TRUSTED"):
    settings["trusted_keys"] = os.environ["CONTRACTED_TRUSTED"]
if os.environ.get("CONTRACTED_KEY"):
    settings["signing_key"] = os.environ["CONTRACTED_KEY"]

app = Celery("fulfilment", broker=broker_url())
bus = EventBus(app, service="fulfilment", max_retries=2, retry_backoff=0.05, **settings)


class UserRegistered(BaseModel):
    user_id: int
    email: str


@bus.subscribe("order.created", versions=[1])
def ship(event: Event) -> None:
    record("fulfilment.ship", event)


@bus.subscribe("order.created")
def audit(event: Event) -> None:
    record("fulfilment.audit", event)


@bus.subscribe("user.registered")
def welcome(user: UserRegistered, event: Event) -> None:
    # The effect shows what the handler was given: the model's class and fields.
    seen = {"model": type(user).__name__, **user.model_dump()}
    record("fulfilment.welcome", dataclasses.replace(event, data=seen))
