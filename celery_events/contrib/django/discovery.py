"""Finding handlers: the ``subscribers`` module of every installed app."""

from __future__ import annotations

from importlib import import_module

from django.apps import apps
from django.utils.module_loading import module_has_submodule

__all__ = ["autodiscover", "SUBSCRIBERS_MODULE"]

SUBSCRIBERS_MODULE = "subscribers"


def autodiscover() -> list[str]:
    """Import ``<app>.subscribers`` for every installed app that has one; return their names.

    An app without such a module is skipped; any error raised while importing one that exists
    (an ``ImportError`` inside it included) propagates, so a broken handler module stops the
    process at start-up instead of silently losing its handlers.

    >>> from celery_events.contrib.django.discovery import autodiscover
    >>> autodiscover()
    ['orders.subscribers', 'billing.subscribers']
    """
    from ._bus import get_bus

    get_bus()
    imported = []
    for config in apps.get_app_configs():
        if module_has_submodule(config.module, SUBSCRIBERS_MODULE):
            name = f"{config.name}.{SUBSCRIBERS_MODULE}"
            import_module(name)
            imported.append(name)
    return imported
