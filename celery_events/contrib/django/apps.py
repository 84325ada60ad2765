"""The Django app: ``INSTALLED_APPS += ["celery_events.contrib.django"]``."""

from __future__ import annotations

from django.apps import AppConfig


class SimpleCeleryEventsConfig(AppConfig):
    """The app without discovery: import your handler modules yourself.

    Use ``"celery_events.contrib.django.apps.SimpleCeleryEventsConfig"`` in ``INSTALLED_APPS``
    instead of ``"celery_events.contrib.django"``.

    In a ``celery worker`` of the project, a broken ``CELERY_EVENTS`` (what the system checks
    report as errors) stops the worker before it is ready, with the checks' messages.
    """

    name = "celery_events.contrib.django"
    label = "celery_events"
    verbose_name = "Celery events"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from ._worker_check import connect_worker_check

        connect_worker_check()


class CeleryEventsConfig(SimpleCeleryEventsConfig):
    """The default app: imports the ``subscribers`` module of every installed app at start-up.

    This runs in every process that calls ``django.setup()``, the ``celery worker`` of a
    Django project included (Celery's Django fixup calls it before the worker records its
    subscriptions), so a worker always knows all of its handlers. With a missing or broken
    ``CELERY_EVENTS`` it does nothing, so that ``manage.py check`` reports the problem
    (``celery_events.E001``-``E003``) and a worker refuses to start.
    """

    default = True

    def ready(self) -> None:
        super().ready()
        from .checks import app_problem
        from .conf import _raw, config_problems
        from .discovery import autodiscover

        raw = _raw()
        if config_problems(raw):
            return  # the system checks report it
        assert isinstance(raw, dict)
        if app_problem(raw["app"]) is not None:
            return  # likewise (E003)
        autodiscover()
