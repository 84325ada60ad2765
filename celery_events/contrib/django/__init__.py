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


class _ProjectBus:
    """``bus``: stands for :func:`get_bus`'s bus, looked up at each use.

    Importing it never makes the bus, so that a module importing it at the top (a views module
    that ``manage.py check`` imports with the URLconf) imports even while ``CELERY_EVENTS`` is
    broken, and the check reports the setting (``celery_events.E002``) instead of a traceback.
    The first attribute used makes the bus, or raises the setting's ConfigurationError.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        return getattr(get_bus(), name)

    # isinstance(bus, EventBus) holds, as for the bus itself.
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(get_bus())

    def __eq__(self, other: object) -> bool:
        return other is self or get_bus() == other

    def __hash__(self) -> int:
        return hash(get_bus())

    def __repr__(self) -> str:
        return repr(get_bus())


_PROJECT_BUS = _ProjectBus()


def __getattr__(name: str) -> Any:
    # `bus` stands for the bus without making it, so that importing this package (from
    # settings, an app's __init__, a views module) needs neither the app registry nor a
    # working CELERY_EVENTS.
    if name == "bus":
        return _PROJECT_BUS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
