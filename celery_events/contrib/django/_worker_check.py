"""Refusing to start a project's ``celery worker`` whose ``CELERY_EVENTS`` is broken.

Without this, a worker of a project whose setting is missing or broken starts "ready" with no
handlers: its app config's ``ready()`` leaves the bus unmade so that the system checks can
speak. A bootstep runs the same checks before the worker consumes and stops it with their
messages (Celery's signal receivers cannot stop a worker; see ``celery_events._worker``).
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps, signals

from ..._worker import refuse_to_start

__all__ = ["connect_worker_check"]


class ConfigCheck(bootsteps.StartStopStep):
    """Stops the worker if ``manage.py check`` would report an error of ``CELERY_EVENTS``."""

    label = "celery-events Django settings check"

    def start(self, parent: Any) -> None:
        from .checks import configuration_errors

        errors = configuration_errors()
        if errors:
            refuse_to_start(" ".join(errors) + " Fix CELERY_EVENTS (manage.py check lists every problem).")


def _on_worker_init(sender: Any = None, instance: Any = None, **kwargs: Any) -> None:
    if instance is not None:
        # The worker's blueprint is built after this signal, so the step is part of it.
        instance.app.steps["worker"].add(ConfigCheck)


def connect_worker_check() -> None:
    """Add the check to every worker this process starts (idempotent)."""
    signals.celeryd_init.connect(
        _on_worker_init, weak=False, dispatch_uid="celery_events.contrib.django.config_check"
    )
