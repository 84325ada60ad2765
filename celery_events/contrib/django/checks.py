"""System checks of ``CELERY_EVENTS``: run by ``manage.py check``, ``runserver`` and ``migrate``.

- ``celery_events.E001``: ``CELERY_EVENTS`` is missing or not a dict.
- ``celery_events.E002``: a key of ``CELERY_EVENTS`` is unknown or has a bad value.
- ``celery_events.E003``: ``CELERY_EVENTS["app"]`` does not import a Celery app.
- ``celery_events.E004``: ``CELERY_EVENTS["database"]`` is not in ``DATABASES``.
- ``celery_events.E005``: an entry of ``CELERY_EVENTS["middleware"]`` does not import a
  :class:`~celery_events.Middleware`.
- ``celery_events.E006``: ``CELERY_EVENTS["state"]`` is ``"database"`` but that database cannot
  lock rows (``SELECT ... FOR UPDATE``: SQLite), so the state store would not be safe there.
- ``celery_events.W001``: the outbox's database cannot lock rows (``SKIP LOCKED``), so
  only one relay may run.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from django.core.checks import CheckMessage, Error, Warning, register
from django.utils.module_loading import import_string

from ...errors import ConfigurationError, describe
from ...middleware import Middleware
from .conf import SETTING, _raw, config_problems

__all__ = ["check_settings"]


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Check ``settings.CELERY_EVENTS``; every message names the key and the fix."""
    raw = _raw()
    messages: list[CheckMessage] = []
    for key, message in config_problems(raw):
        messages.append(
            Error(message, obj=SETTING, id="celery_events.E001" if key == SETTING else "celery_events.E002")
        )
    if messages or not isinstance(raw, dict):
        return messages
    problem = app_problem(raw["app"])
    if problem is not None:
        message, hint = problem
        messages.append(Error(message, hint=hint, obj=SETTING, id="celery_events.E003"))
    for path in raw.get("middleware", []):
        try:
            load_middleware(path)
        except ValueError as exc:
            messages.append(
                Error(
                    str(exc),
                    hint="Name a subclass of celery_events.Middleware, such as 'proj.events.Stamp'.",
                    obj=SETTING,
                    id="celery_events.E005",
                )
            )
    from django.db import connections

    database = raw.get("database", "default")
    if database not in connections.settings:
        messages.append(
            Error(
                f"CELERY_EVENTS['database'] is {database!r}, which is not in DATABASES.",
                hint=f"Use one of {', '.join(sorted(connections.settings))}.",
                obj=SETTING,
                id="celery_events.E004",
            )
        )
    elif raw.get("state") == "database":
        from .state import check_database

        try:
            check_database(database)
        except ConfigurationError as exc:
            messages.append(
                Error(
                    str(exc),
                    hint="Point CELERY_EVENTS['database'] at a PostgreSQL database.",
                    obj=SETTING,
                    id="celery_events.E006",
                )
            )
    if database in connections.settings and raw.get("outbox") and not connections[database].features.has_select_for_update_skip_locked:
        messages.append(
            Warning(
                f"The outbox's database {database!r} cannot lock rows with SKIP LOCKED, so two"
                " outbox relays could send one event twice.",
                hint="Run a single relay, or keep the outbox in PostgreSQL, MySQL 8 or Oracle.",
                obj=SETTING,
                id="celery_events.W001",
            )
        )
    return messages


def app_problem(path: str) -> tuple[str, str] | None:
    """``(message, hint)`` if ``CELERY_EVENTS["app"]`` does not import a Celery app, else None."""
    try:
        app = import_string(path.replace(":", "."))
    except ImportError as exc:
        return (
            f"CELERY_EVENTS['app'] is {path!r}, which cannot be imported: {describe(exc)}.",
            "Name your Celery app's module and variable, such as 'proj.celery.app'.",
        )
    if not isinstance(app, Celery):
        return (
            f"CELERY_EVENTS['app'] is {path!r}, which is a {type(app).__name__}, not a Celery app.",
            "Point it at the Celery() instance of your project.",
        )
    return None


def load_middleware(path: str) -> Middleware:
    """The middleware ``path`` names: an instance, or a class made without arguments.

    Raises :class:`ValueError` saying what is wrong with it.
    """
    try:
        found = import_string(path.replace(":", "."))
    except ImportError as exc:
        raise ValueError(
            f"CELERY_EVENTS['middleware'] names {path!r}, which cannot be imported: {describe(exc)}."
        ) from exc
    if isinstance(found, type) and issubclass(found, Middleware):
        try:
            return found()
        except TypeError as exc:
            raise ValueError(
                f"CELERY_EVENTS['middleware'] names the class {path!r}, which cannot be made"
                f" without arguments: {describe(exc)}. Name an instance of it instead."
            ) from exc
    if isinstance(found, Middleware):
        return found
    raise ValueError(
        f"CELERY_EVENTS['middleware'] names {path!r}, which is a {type(found).__name__}, not a"
        " celery_events.Middleware (a subclass or an instance of one)."
    )


def configuration_errors() -> list[str]:
    """Every error :func:`check_settings` finds, each with its hint and id, as sentences."""
    texts = []
    for message in check_settings():
        if message.is_serious():
            hint = f" {message.hint}" if message.hint else ""
            texts.append(f"{message.msg}{hint} ({message.id})")
    return texts


register(check_settings, "celery_events")
