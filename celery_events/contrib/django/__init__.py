"""The Django integration: ``INSTALLED_APPS += ["celery_events.contrib.django"]``.

Configure it with one dict in your settings (every key: :mod:`celery_events.contrib.django.conf`),
``CELERY_EVENTS = {"service": "orders", "app": "proj.celery.app"}``, and use the project's bus,
made on first use (``bus``, or ``get_bus()``):

>>> from celery_events.contrib.django import get_bus
>>> bus = get_bus()
>>> bus.service
'shop'

Handlers subscribe in ``<app>/subscribers.py`` (``@bus.subscribe("user.registered",
atomic=True)`` runs the handler and its inbox row in one transaction). A publish inside a
transaction is sent after the commit, or written to the outbox when ``outbox`` is on:

>>> from django.db import transaction
>>> with transaction.atomic():
...     result = bus.publish("order.placed", {"order_id": 1})
>>> result.deferred
True

``subscribers`` modules of installed apps are imported at start-up, in web processes and in
``celery -A proj worker`` alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...bus import EventBus

__all__ = ["bus", "get_bus"]


def get_bus() -> EventBus:
    """Return the project's bus (see :func:`celery_events.contrib.django._bus.get_bus`)."""
    from ._bus import get_bus as _get_bus

    return _get_bus()


def __getattr__(name: str) -> Any:
    # `bus` is looked up on use, so that importing this package from settings or an app's
    # __init__ does not need the app registry to be ready.
    if name == "bus":
        return get_bus()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
