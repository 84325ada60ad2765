"""The Django project's bus: made once from ``CELERY_EVENTS``, with Django's middleware."""

from __future__ import annotations

import threading

from celery import Celery
from django.utils.module_loading import import_string

from ...bus import EventBus
from ...errors import ConfigurationError, describe
from .checks import load_middleware
from .conf import read_config
from .middleware import DjangoTransactions

__all__ = ["get_bus"]

_bus: EventBus | None = None
_lock = threading.Lock()


def get_bus() -> EventBus:
    """Return the project's bus, making it on first call from ``settings.CELERY_EVENTS``.

    ``CELERY_EVENTS["middleware"]`` lists the user's middleware by import path. The chain
    ends with :class:`~celery_events.contrib.django.middleware.DjangoTransactions`:
    ``publish()`` inside ``transaction.atomic()`` sends after the commit (or writes the
    outbox), and ``atomic=True`` handlers run in a transaction with the database inbox.

    ``CELERY_EVENTS["app"]`` names the Celery app (``"proj.celery.app"``) and
    ``CELERY_EVENTS["service"]`` the service; other bus settings come from the same dict.
    ``CELERY_EVENTS["state"] = "database"`` keeps inboxes, leases and dead letters in the
    database (:class:`~celery_events.contrib.django.state.DatabaseState`).

    >>> from celery_events.contrib.django import get_bus
    >>> get_bus().publish("order.placed", {"order_id": 7}).deferred   # outbox on: a row written
    True
    """
    global _bus
    if _bus is not None:
        return _bus
    with _lock:
        if _bus is None:
            config = read_config()
            try:
                app = import_string(config.app.replace(":", "."))
            except ImportError as exc:
                raise ConfigurationError(
                    f"CELERY_EVENTS['app'] is {config.app!r}, which cannot be imported: {describe(exc)}."
                    " Name your Celery app's module and variable, such as 'proj.celery.app'."
                ) from exc
            if not isinstance(app, Celery):
                raise ConfigurationError(
                    f"CELERY_EVENTS['app'] is {config.app!r}, which is a"
                    f" {type(app).__name__}, not a Celery app."
                )
            middleware = []
            for path in config.middleware:
                try:
                    middleware.append(load_middleware(path))
                except ValueError as exc:
                    raise ConfigurationError(str(exc)) from exc
            state = None
            if config.state == "database":
                from .state import DatabaseState

                # The alias is read per call, as the rest of the integration reads it.
                state = DatabaseState(lambda: read_config().database)
            _bus = EventBus(
                app,
                config.service,
                # The user's first: they see an event before it is deferred or stored.
                middleware=[*middleware, DjangoTransactions()],
                state=state,
                **dict(config.bus_settings),
            )
            from . import outbox

            outbox.connect_worker_relay(_bus)
    return _bus
