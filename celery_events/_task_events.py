"""Turning on the Celery task events that Flower shows deliveries with.

Celery sends no task events unless the worker is started with ``-E`` and publishers set
``task_send_sent_event``. A bus turns both on for its app (the ``task_events`` setting, on by
default), so that plain ``celery -A svc worker`` shows every delivery in Flower. A value the
app's own configuration sets (``app.conf``, ``config_from_object``, a Django ``CELERY_``
setting) is left alone, whichever it is.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

#: The Celery settings the bus turns on, unless the app's configuration sets them.
TASK_EVENT_SETTINGS = ("worker_send_task_events", "task_send_sent_event")


def enable_task_events(app: Celery) -> None:
    """Turn on task events for ``app`` once its configuration is loaded.

    Celery reads its configuration lazily, so what the user set may not be known yet when the
    bus is created; the choice is made when the configuration is loaded (and again if it is
    reloaded by a later ``config_from_object``).
    """
    app.on_after_configure.connect(_on_after_configure, sender=app, weak=False)
    if app.configured:
        _apply(app.conf)


def _on_after_configure(sender: Celery, source: Any, **kwargs: Any) -> None:
    _apply(source)


def _apply(conf: Any) -> None:
    for key in TASK_EVENT_SETTINGS:
        # value_set_for sees every layer but Celery's defaults, including namespaced
        # (CELERY_...) and old-style names.
        if not conf.value_set_for(key):
            conf[key] = True
