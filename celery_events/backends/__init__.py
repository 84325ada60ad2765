"""Backends: what a broker URL provides, chosen by its scheme from one table.

- ``redis://``, ``rediss://``, ``unix://``, ``redis+socket://``: the ``redis`` backend, atomic
  Lua fan-out and the screening transport; state on the broker's Redis, the registry there or
  on ``registry_url`` (``backends/redis/``);
- ``amqp://``, ``amqps://``, ``pyamqp://``: the ``amqp`` backend, one confirmed message per
  publish to a topic exchange, each handler's own quorum (or classic) queue, screening workers;
  the registry on RabbitMQ or the ``registry_url`` Redis, state on the ``state_url`` Redis,
  the ``registry_url`` one, or the bus's own store (``backends/amqp/``);
- ``sentinel://``: the ``sentinel`` backend, the Redis one on the primary its sentinels name
  (``master_name`` in ``broker_transport_options``), following failovers
  (``backends/redis/``);
- ``memory://``: the ``memory`` backend, kombu's in-process queues and dicts
  (``backends/memory.py``).

Each backend module provides ``CAPABILITIES`` (:class:`~.base.Capabilities`) and
``open_backend(app, settings, broker_url, name, state=None)`` returning a
:class:`~.base.Backend`. A bus may bring a state store of its own (``EventBus(state=...)``, the
Django database's) for inboxes and dead letters: the backend wires it in (Redis keeps its
lost-delivery ledger beside it), and its capabilities say what is lost
(:func:`~.base.with_state`). A backend's
module is imported when it is first used, so an app on ``memory://`` never imports redis-py.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigurationError
from .base import Backend, Capabilities, StateStore, with_state

__all__ = [
    "backend_name",
    "capabilities_of",
    "first_broker_url",
    "open_backend",
    "without_password",
]

#: Broker URL scheme -> backend name.
SCHEMES: dict[str, str] = {
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
    "redis+socket": "redis",
    "amqp": "amqp",
    "amqps": "amqp",
    "pyamqp": "amqp",
    "sentinel": "sentinel",
    "memory": "memory",
}

#: Backend name -> the module that makes it.
MODULES: dict[str, str] = {
    "redis": "celery_events.backends.redis",
    "amqp": "celery_events.backends.amqp",
    "sentinel": "celery_events.backends.redis",
    "memory": "celery_events.backends.memory",
}

# Celery's own default when an app names no broker.
_DEFAULT_BROKER = "amqp://guest@localhost//"


def first_broker_url(app_broker: object) -> str:
    """Return the first URL of a Celery ``broker_url`` (which may list fail-over URLs).

    A ``sentinel://`` list is one broker, its sentinels (as kombu reads it): it is returned
    whole.
    """
    if isinstance(app_broker, (list, tuple)):
        app_broker = ";".join(str(url) for url in app_broker)
    text = str(app_broker or "")
    pieces = [piece.strip() for piece in text.split(";") if piece.strip()]
    if not pieces:
        return ""
    if pieces[0].startswith("sentinel://"):
        return ";".join(piece for piece in pieces if piece.startswith("sentinel://"))
    return pieces[0]


def without_password(url: str) -> str:
    """``url`` with its password, if any, shown as ``***`` (for messages and logs); each URL
    of a ``;``-separated list (Sentinel's) is shown so."""
    if ";" in url:
        return ";".join(without_password(piece) for piece in url.split(";"))
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def broker_url_of(app: Any) -> str:
    """The URL of ``app``'s broker (Celery's default when the app names none)."""
    return first_broker_url(app.conf.broker_url) or _DEFAULT_BROKER


def backend_name(url: str) -> str:
    """The backend serving broker ``url``; :class:`ConfigurationError` for an unknown scheme."""
    scheme = urlsplit(url).scheme if "://" in url else url
    name = SCHEMES.get(scheme)
    if name is None:
        close = difflib.get_close_matches(scheme, SCHEMES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigurationError(
            f"The broker URL scheme {scheme!r} has no celery-events backend.{hint} The schemes"
            f" it knows are {', '.join(sorted(SCHEMES))}; use one of them in the app's"
            " broker_url."
        )
    return name


def _module(name: str) -> Any:
    return importlib.import_module(MODULES[name])


def capabilities_of(name: str, *, own_state: bool = True) -> Capabilities:
    """What backend ``name`` guarantees (see :class:`~.base.Capabilities`); with
    ``own_state=False``, beside a state store the bus brings."""
    capabilities: Capabilities = _module(name).CAPABILITIES
    return capabilities if own_state else with_state(capabilities)


def open_backend(app: Any, settings: Any, state: StateStore | None = None) -> Backend:
    """Make the backend for ``app``'s broker URL, its roles configured by ``settings``; with
    ``state``, that is where its inboxes and dead letters live."""
    url = broker_url_of(app)
    name = backend_name(url)
    module = _module(name)
    if state is None:
        backend: Backend = module.open_backend(app, settings, url, name)
        return backend
    backend = module.open_backend(app, settings, url, name, state=state)
    # A store may say where it is (``description``), for `celery eventbus status`.
    where = getattr(state, "description", None) or type(state).__name__
    return dataclasses.replace(
        backend,
        capabilities=with_state(backend.capabilities),
        description=f"{backend.description}; inboxes and dead letters in {where}",
    )
