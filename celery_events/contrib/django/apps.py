"""The Django app: ``INSTALLED_APPS += ["celery_events.contrib.django"]``."""

from __future__ import annotations

from django.apps import AppConfig


class SimpleCeleryEventsConfig(AppConfig):
    """The app without discovery: import your handler modules yourself.

    Use ``"celery_events.contrib.django.apps.SimpleCeleryEventsConfig"`` in ``INSTALLED_APPS``
    instead of ``"celery_events.contrib.django"``.
    """

    name = "celery_events.contrib.django"
    label = "celery_events"
    verbose_name = "Celery events"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)


class CeleryEventsConfig(SimpleCeleryEventsConfig):
    """The default app: imports the ``subscribers`` module of every installed app at start-up.

    This runs in every process that calls ``django.setup()``, the ``celery worker`` of a
    Django project included (Celery's Django fixup calls it before the worker records its
    subscriptions), so a worker always knows all of its handlers.
    """

    default = True

    def ready(self) -> None:
        super().ready()
        from .conf import _raw
        from .discovery import autodiscover

        if _raw() is None:
            return  # the system checks report the missing setting
        autodiscover()
