"""The ``CELERY_EVENTS`` Django setting: its keys, defaults and validation.

One dict holds everything. Its keys, with their defaults: ``service`` (this service's name,
required), ``app`` (the Celery app as an import path, required), ``outbox`` (``False``: write
published events to the outbox table), ``database`` (``"default"``: the alias of the outbox
and the inbox), ``state`` (``"backend"``; ``"database"`` keeps inboxes, leases and dead letters
in it), ``relay_in_worker`` (``False``: run the outbox relay inside ``celery worker``),
``relay_interval`` (``1.0`` second between two polls of an idle outbox), ``relay_batch_size``
(``100`` rows per relay transaction), ``outbox_retention`` and ``inbox_retention``
(``604800.0`` seconds a sent outbox row and an inbox row are kept), ``middleware`` (``[]``:
import paths of :class:`~celery_events.Middleware`, outermost first), and any
:class:`~celery_events.Settings` of the bus:

>>> from django.test import override_settings
>>> from celery_events.contrib.django.conf import read_config
>>> CELERY_EVENTS = {"service": "orders", "app": "proj.celery.app", "outbox": True,
...                  "publish_timeout": 2.0}
>>> with override_settings(CELERY_EVENTS=CELERY_EVENTS):
...     config = read_config()
>>> config.service, config.outbox, config.relay_batch_size, config.bus_settings
('orders', True, 100, (('publish_timeout', 2.0),))
>>> with override_settings(CELERY_EVENTS={"service": "orders", "app": "proj.celery.app", "outbx": True}):
...     read_config()
Traceback (most recent call last):
...
celery_events.errors.ConfigurationError: ...outbx...

The setting is read when it is used, not at import, so ``override_settings`` works for every
key read per call (``outbox``, ``database``, the relay's and the retention keys). ``service``,
``app``, ``state`` and the bus settings are read once, when the bus is made.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from typing import Any

from ...errors import ConfigurationError
from ...settings import Settings, validate_service_name

__all__ = ["Config", "read_config", "config_problems"]

SETTING = "CELERY_EVENTS"
#: The values of ``CELERY_EVENTS["state"]``.
STATES = ("backend", "database")


@dataclass(frozen=True)
class Config:
    """The integration's own keys of ``CELERY_EVENTS``; bus settings are in ``bus_settings``."""

    service: str
    app: str
    outbox: bool = False
    database: str = "default"
    #: Where inboxes, leases and dead letters live: ``"backend"`` (the broker's store, Redis)
    #: or ``"database"`` (the ``database`` alias's tables, ``state.py``).
    state: str = "backend"
    relay_in_worker: bool = False
    relay_interval: float = 1.0
    relay_batch_size: int = 100
    outbox_retention: float = 7 * 24 * 3600.0
    inbox_retention: float = 7 * 24 * 3600.0
    #: Import paths of the bus's middleware (classes, made without arguments, or instances),
    #: outermost first; Django's own comes after them.
    middleware: tuple[str, ...] = ()
    #: Every other key: an EventBus setting, validated by ``Settings.from_options``.
    bus_settings: tuple[tuple[str, Any], ...] = ()


_OWN_KEYS = {f.name for f in fields(Config)} - {"bus_settings"}


def _raw() -> object:
    from django.conf import settings

    return getattr(settings, SETTING, None)


def config_problems(raw: object) -> list[tuple[str, str]]:
    """Return ``(key, message)`` for every problem of a ``CELERY_EVENTS`` value."""
    if raw is None:
        return [
            (
                SETTING,
                "The setting CELERY_EVENTS is missing. Add CELERY_EVENTS = {'service':"
                " 'orders', 'app': 'proj.celery.app'} to your settings.",
            )
        ]
    if not isinstance(raw, dict):
        return [
            (
                SETTING,
                f"The setting CELERY_EVENTS must be a dict, not {type(raw).__name__}; write"
                " CELERY_EVENTS = {'service': 'orders', 'app': 'proj.celery.app'}.",
            )
        ]
    problems: list[tuple[str, str]] = []
    for key in ("service", "app"):
        if key not in raw:
            example = "'orders'" if key == "service" else "'proj.celery.app'"
            problems.append(
                (key, f"CELERY_EVENTS has no {key!r}; add {key!r}: {example} to it.")
            )
    if "service" in raw:
        try:
            validate_service_name(raw["service"])
        except ConfigurationError as exc:
            problems.append(("service", f"CELERY_EVENTS['service']: {exc}"))
    if "app" in raw and (not isinstance(raw["app"], str) or "." not in raw["app"]):
        problems.append(
            (
                "app",
                f"CELERY_EVENTS['app'] must be the import path of your Celery app, such as"
                f" 'proj.celery.app', not {raw['app']!r}.",
            )
        )
    for key in ("outbox", "relay_in_worker"):
        if key in raw and not isinstance(raw[key], bool):
            problems.append((key, f"CELERY_EVENTS[{key!r}] must be True or False, not {raw[key]!r}."))
    if "database" in raw and (not isinstance(raw["database"], str) or not raw["database"]):
        problems.append(
            ("database", f"CELERY_EVENTS['database'] must be a database alias, not {raw['database']!r}.")
        )
    if "state" in raw and raw["state"] not in STATES:
        problems.append(
            (
                "state",
                f"CELERY_EVENTS['state'] must be {' or '.join(map(repr, STATES))}, not"
                f" {raw['state']!r}: 'backend' keeps inboxes, leases and dead letters in the"
                " broker's store (Redis), 'database' in the tables of CELERY_EVENTS['database'].",
            )
        )
    for key in ("relay_interval", "outbox_retention", "inbox_retention"):
        value = raw.get(key, 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            problems.append(
                (key, f"CELERY_EVENTS[{key!r}] must be a positive number of seconds, not {value!r}.")
            )
    size = raw.get("relay_batch_size", 1)
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        problems.append(
            (
                "relay_batch_size",
                f"CELERY_EVENTS['relay_batch_size'] must be a positive whole number, not {size!r}.",
            )
        )
    middleware = raw.get("middleware", [])
    if not isinstance(middleware, (list, tuple)) or not all(
        isinstance(path, str) and "." in path for path in middleware
    ):
        problems.append(
            (
                "middleware",
                "CELERY_EVENTS['middleware'] must be a list of import paths of"
                f" celery_events.Middleware classes, such as ['proj.events.Stamp'], not"
                f" {middleware!r}.",
            )
        )
    bus_keys = {f.name for f in fields(Settings)}
    known = sorted(_OWN_KEYS | bus_keys)
    for key in raw:
        if key not in _OWN_KEYS and key not in bus_keys:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.append(
                (
                    str(key),
                    f"{key!r} is not a key of CELERY_EVENTS.{hint} The keys are:"
                    f" {', '.join(known)}.",
                )
            )
    bus_options = {k: v for k, v in raw.items() if k in bus_keys}
    try:
        Settings.from_options(bus_options)
    except ConfigurationError as exc:
        bad = next((k for k in bus_options if str(k) in str(exc)), SETTING)
        problems.append((str(bad), f"CELERY_EVENTS: {exc}"))
    return problems


def read_config() -> Config:
    """Read and check ``settings.CELERY_EVENTS`` now; raise :class:`ConfigurationError` if bad."""
    raw = _raw()
    problems = config_problems(raw)
    if problems:
        raise ConfigurationError(problems[0][1])
    assert isinstance(raw, dict)
    own = {k: v for k, v in raw.items() if k in _OWN_KEYS}
    if "middleware" in own:
        own["middleware"] = tuple(own["middleware"])
    bus_settings = tuple((k, v) for k, v in raw.items() if k not in _OWN_KEYS)
    return Config(**own, bus_settings=bus_settings)
