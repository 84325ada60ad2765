"""The Flask extension: a bus per Flask app, handlers run inside the app's context.

>>> from celery import Celery
>>> from flask import Flask, current_app
>>> from celery_events.contrib.flask import CeleryEvents
>>> events = CeleryEvents()                       # at import time, app factory style
>>> @events.subscribe("user.registered")
... def welcome(event):
...     current_app.logger.info("welcome %s", event.data["user_id"])   # app context is active
>>> def create_app():
...     app = Flask(__name__)
...     app.config["CELERY_EVENTS"] = {"service": "shop"}
...     events.init_app(app, celery=Celery("shop", broker="redis://127.0.0.1:6379/0"))
...     return app

In a view, ``events.publish("order.placed", {...})`` publishes through the bus of
``current_app``. In the worker (``celery -A shop.worker worker``, a module that calls
``create_app()`` and exposes its Celery app), every handler runs inside
``flask_app.app_context()``: the bus's innermost middleware enters it around each handler
call.

Configuration, read by :meth:`CeleryEvents.init_app` from ``app.config``:

- ``CELERY_EVENTS`` (required), a dict: ``"service"`` (required), this service's name;
  ``"middleware"``, a list of :class:`~celery_events.Middleware` for the bus (the app context
  comes after them); and any :class:`~celery_events.EventBus` setting (``publish_timeout``,
  ``registry_url``, ...), checked when ``init_app`` runs.

The Celery app is the ``celery=`` argument of ``init_app`` or of the constructor, or else
``app.extensions["celery"]``, where Flask's documented Celery set-up (``celery_init_app``)
keeps it. One Celery app has one bus: calling ``init_app`` for several Flask apps that share a
Celery app (tests calling the factory twice) reuses its bus, and handlers run in the context
of the Flask app initialised last.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from celery import Celery
from flask import Flask, current_app, has_app_context

from ..bus import EventBus, PublishResult, bus_for
from ..envelope import Event
from ..errors import ConfigurationError
from ..middleware import HandleNext, HandlerCall, Middleware

__all__ = ["CeleryEvents", "AppContext"]

EXTENSION = "celery_events"

F = TypeVar("F", bound=Callable[[Event], Any])


@dataclass
class _State:
    """What ``app.extensions["celery_events"]`` holds."""

    extension: CeleryEvents
    bus: EventBus
    celery: Celery


class AppContext(Middleware):
    """Runs each handler call inside ``flask_app.app_context()`` (the Flask app initialised
    last on the bus); made by :meth:`CeleryEvents.init_app` as the bus's innermost middleware.
    """

    def __init__(self) -> None:
        self.flask_app: Flask | None = None

    def handle(self, call: HandlerCall, call_next: HandleNext) -> Any:
        flask_app = self.flask_app
        if flask_app is None:
            return call_next(call)
        with flask_app.app_context():
            return call_next(call)


class CeleryEvents:
    """An event bus for a Flask app; see the module docstring for its configuration keys."""

    def __init__(self, app: Flask | None = None, *, celery: Celery | None = None) -> None:
        self._celery = celery
        self._lock = threading.Lock()
        self._subscriptions: list[tuple[str, Callable[[Event], Any], dict[str, Any]]] = []
        #: Per bus: its app-context middleware (naming the Flask app whose context its
        #: handlers run in), and what is subscribed.
        self._contexts: weakref.WeakKeyDictionary[EventBus, AppContext] = (
            weakref.WeakKeyDictionary()
        )
        self._subscribed: weakref.WeakKeyDictionary[EventBus, set[int]] = (
            weakref.WeakKeyDictionary()
        )
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, *, celery: Celery | None = None) -> None:
        """Make (or reuse) the bus of ``app``'s Celery app and subscribe the handlers to it.

        Raises :class:`ConfigurationError` if ``app`` already has the extension, if
        ``CELERY_EVENTS`` is missing or bad, or if no Celery app is given.
        """
        if EXTENSION in app.extensions:
            raise ConfigurationError(
                f"CeleryEvents is already registered on the Flask app {app.name!r}; call"
                " init_app once per app."
            )
        raw = app.config.get("CELERY_EVENTS")
        if not isinstance(raw, dict) or "service" not in raw:
            raise ConfigurationError(
                f"The Flask app {app.name!r} has no valid CELERY_EVENTS config (found"
                f" {raw!r}); set app.config['CELERY_EVENTS'] = {{'service': 'shop'}} before"
                " init_app."
            )
        celery_app = celery or self._celery or app.extensions.get("celery")
        if not isinstance(celery_app, Celery):
            raise ConfigurationError(
                f"CeleryEvents has no Celery app for the Flask app {app.name!r}: pass"
                " init_app(app, celery=celery_app), or keep it in app.extensions['celery']."
            )
        settings = {k: v for k, v in raw.items() if k not in ("service", "middleware")}
        middleware = list(raw.get("middleware") or ())
        with self._lock:
            bus = self._bus_of(celery_app, raw["service"], settings, middleware)
            self._contexts[bus].flask_app = app
            self._subscribed.setdefault(bus, set())
            for pattern, func, options in self._subscriptions:
                self._subscribe_on(bus, pattern, func, options)
        app.extensions[EXTENSION] = _State(self, bus, celery_app)

    def _bus_of(
        self,
        celery_app: Celery,
        service: str,
        settings: dict[str, Any],
        middleware: list[Middleware],
    ) -> EventBus:
        try:
            existing = bus_for(celery_app)
        except ConfigurationError:  # no bus yet: make it, with the app context innermost
            context = AppContext()
            bus = EventBus(celery_app, service, middleware=[*middleware, context], **settings)
            self._contexts[bus] = context
            return bus
        if existing not in self._contexts or existing.service != service:
            raise ConfigurationError(
                f"The Celery app {celery_app.main!r} already has a bus for service"
                f" {existing.service!r}, not made by this CeleryEvents; give each Flask app"
                " its own Celery app or share one CeleryEvents."
            )
        return existing

    def subscribe(self, pattern: str, **options: Any) -> Callable[[F], F]:
        """Subscribe the decorated function on every bus this extension makes.

        Takes the arguments of :meth:`EventBus.subscribe`; the handler runs inside the Flask
        app's context. It may be used before ``init_app``; the function is returned unchanged.
        """

        def decorator(func: F) -> F:
            with self._lock:
                self._subscriptions.append((pattern, func, options))
                for bus in list(self._contexts):
                    self._subscribe_on(bus, pattern, func, options)
            return func

        return decorator

    def _subscribe_on(
        self, bus: EventBus, pattern: str, func: Callable[[Event], Any], options: dict[str, Any]
    ) -> None:
        done = self._subscribed[bus]
        key = id(func)
        if key in done:
            return
        bus.subscribe(pattern, **options)(func)
        done.add(key)

    def bus_for(self, app: Flask) -> EventBus:
        """The bus of ``app``, or :class:`ConfigurationError` if ``init_app`` was not called."""
        state = app.extensions.get(EXTENSION)
        if not isinstance(state, _State) or state.extension is not self:
            raise ConfigurationError(
                f"CeleryEvents was not initialised for the Flask app {app.name!r}; call"
                " events.init_app(app) in your app factory."
            )
        return state.bus

    @property
    def bus(self) -> EventBus:
        """The bus of ``current_app`` (needs an application or request context)."""
        if not has_app_context():
            raise ConfigurationError(
                "events.bus and events.publish() need a Flask application context; inside a"
                " view they have one, elsewhere use events.bus_for(app) or app.app_context()."
            )
        return self.bus_for(current_app._get_current_object())  # type: ignore[attr-defined]

    def publish(
        self, name: str, data: dict[str, Any] | None = None, **options: Any
    ) -> PublishResult:
        """Publish through the bus of ``current_app``; same arguments as :meth:`EventBus.publish`.

        >>> from celery import Celery
        >>> from flask import Flask
        >>> from celery_events.contrib.flask import CeleryEvents
        >>> app = Flask("shop")
        >>> app.config["CELERY_EVENTS"] = {"service": "shop"}
        >>> events = CeleryEvents(app, celery=Celery("shop", broker="redis://localhost:6379/0"))
        >>> @app.post("/orders")
        ... def place_order():
        ...     result = events.publish("order.placed", {"order_id": 7})
        ...     return {"event_id": result.event.id}
        >>> app.test_client().post("/orders").json
        {'event_id': '...'}
        """
        return self.bus.publish(name, data, **options)
