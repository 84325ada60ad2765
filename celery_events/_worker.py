"""What a service's ``celery worker`` does for its bus, whatever the backend.

Before the worker is built (``celeryd_init``): the backend's transport prepares the app
(``Transport.prepare_worker``: on Redis, the screening transport and a long enough visibility
timeout), handler retries' task-sent events are named like their deliveries, and the start-up
check bootstep is added. After it is built, before it consumes (``celeryd_after_setup``): add
the service's event queues. The bootstep then, before the worker consumes or says "ready",
checks the bus (a handler its own scopes forbid, what the backend's transport refuses, atomic
handlers without a transaction runner, a registry it cannot reach, a capability the service requires and the backend lacks)
and records the service's subscriptions and declarations (refusing a declared schema that breaks
the registered one of its version: ``IncompatibleSchema``, whose message is the diff); if any of
that fails, the worker logs one error saying what to fix and exits with status 1. (Celery's signal dispatch logs and swallows a receiver's
exception, so a check in a signal receiver cannot stop a worker; a bootstep's ``SystemExit``
does.) Once it runs (``worker_ready``): the backend's recovery starts, if it has one (on Redis:
the lost-delivery sweeper and the dead-worker reaper).

The bus of the worker's app is found through :mod:`celery_events._buses`; this module imports
no bus, so the bus may import it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol, cast

from celery import bootsteps, signals

from . import _buses, _selection, trust
from ._timers import CancelledTimerSweep
from .backends.base import Backend, Recovery, ServiceBus, check_required
from .errors import CeleryEventsError, ConfigurationError

log = logging.getLogger(__name__)


class _HandlerView(Protocol):
    @property
    def task_name(self) -> str: ...

    @property
    def atomic(self) -> bool: ...


class _RegistryView(Protocol):
    def refresh(self) -> object: ...


class _ChainView(Protocol):
    @property
    def transactional(self) -> bool: ...

    def worker_started(self, bus: Any) -> None: ...

    def worker_stopping(self, bus: Any) -> None: ...

    def dead_lettered(self, letter: Any) -> None: ...


class WorkerBus(ServiceBus, Protocol):
    """What the worker side reads from the bus (``EventBus`` is one)."""

    @property
    def backend(self) -> Backend: ...

    @property
    def handlers(self) -> Sequence[_HandlerView]: ...

    @property
    def registry(self) -> _RegistryView: ...

    @property
    def middleware(self) -> _ChainView: ...

    def register(self) -> Sequence[object]: ...

    def check_subscriptions(self) -> None: ...


def _bus(app: Any) -> WorkerBus | None:
    return cast("WorkerBus | None", _buses.for_app(app))


def check_worker(bus: WorkerBus) -> None:
    """Raise :class:`CeleryEventsError` if ``bus``'s worker could not do its job.

    Run by the start-up bootstep before the worker consumes; raises what the worker must not
    start with, and records the service's subscriptions (``register_on_worker_start``).
    """
    # Made now so that a broker with no registry of its own (and no registry_url), or without
    # a capability the service requires, stops here.
    # The service's own scopes first: a handler it may not subscribe to is a configuration
    # error whatever the broker says (and is checked again by register()).
    bus.check_subscriptions()
    backend = bus.backend
    check_required(backend.name, backend.capabilities, bus.settings.require)
    if bus.handlers:
        # Its inbox is where its deliveries are claimed: a backend without a state store
        # (RabbitMQ given none) says so here, not at the first delivery.
        _ = bus.inbox
    backend.transport.check_worker(bus)
    trust.check_worker(bus)
    atomic = [h.task_name for h in bus.handlers if h.atomic]
    if atomic and not bus.middleware.transactional:
        raise ConfigurationError(
            f"Handlers {', '.join(atomic)} are atomic=True, but the bus of service"
            f" {bus.service!r} has no transaction runner. Add 'celery_events.contrib.django' to"
            " INSTALLED_APPS, or drop atomic=True."
        )
    registry = bus.registry
    if bus.settings.register_on_worker_start:
        subscriptions = bus.register()
        log.info(
            "celery-events: service %r consumes %s with %d subscription(s)",
            bus.service,
            ", ".join(_selection.consumed_queues(bus)) or "no event queue",
            len(subscriptions),
        )
    else:
        registry.refresh()


def refuse_to_start(message: str) -> None:
    """Stop a worker that is starting: log ``message`` once and exit with status 1.

    Called from a bootstep's ``start``: Celery's worker turns the ``SystemExit`` into a warm
    stop with that exit code, before the consumer starts and before "ready" is logged.
    """
    log.critical("celery-events: the worker cannot start: %s", message)
    raise SystemExit(1)


class StartupCheck(bootsteps.StartStopStep):  # type: ignore[misc]
    """Refuses to start a worker whose bus is misconfigured (see :func:`check_worker`)."""

    label = "celery-events start-up check"

    def start(self, parent: Any) -> None:
        bus = _bus(parent.app)
        if bus is None:
            return
        try:
            check_worker(bus)
        except CeleryEventsError as exc:
            refuse_to_start(str(exc))


def name_retries_like_deliveries(bus: WorkerBus) -> None:
    """Give the task-sent events of handler retries the delivery's shown name.

    A handler's retry is re-sent by Celery's own ``Task.retry``, whose task-sent event names the
    handler's task (``orders.welcome_order``), not the delivery (``user.registered →
    orders.welcome_order``). That event can reach Flower after the worker's task-received, and
    Flower then lists the delivery under the bare task name. The retry is sent from inside the
    running delivery, whose request carries the shown name, so the event is renamed here.
    """
    dispatcher = getattr(bus.app.amqp, "_event_dispatcher", None)
    if dispatcher is None or getattr(dispatcher, "_celery_events_renames", False):
        return
    publish = dispatcher.publish
    app = bus.app

    def publish_named(type: str, fields: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if type == "task-sent" and fields.get("name") in bus.handler_names:
            task = app.current_worker_task
            shown = getattr(task.request, "shadow", None) if task is not None else None
            if shown and task.request.id == fields.get("uuid"):
                fields = {**fields, "name": shown}
        return publish(type, fields, *args, **kwargs)

    dispatcher.publish = publish_named
    dispatcher._celery_events_renames = True


def _on_worker_init(sender: Any = None, conf: Any = None, instance: Any = None, **kwargs: Any) -> None:
    bus = _bus(instance.app) if instance is not None else None
    if bus is None:
        return
    # The worker's -Q and -X, for what it consumes of the event queues (_selection.py).
    _selection.remember(instance.app, kwargs.get("options"))
    # The blueprint is built after this signal, so the step is part of this worker.
    instance.app.steps["worker"].add(StartupCheck)
    # Every delivery has a hard time limit, whose cancelled timer entry would otherwise stay
    # in the main process for time_limit seconds after the delivery (see _timers.py).
    instance.app.steps["consumer"].add(CancelledTimerSweep)
    name_retries_like_deliveries(bus)
    try:
        bus.backend.transport.prepare_worker(bus)
    except ConfigurationError:
        pass  # the start-up check refuses the worker with this message


def _on_worker_setup(sender: str, instance: Any, **kwargs: Any) -> None:
    bus = _bus(instance.app)
    if bus is None:
        return
    try:
        topology = bus.backend.topology
    except CeleryEventsError:
        return  # the start-up check refuses the worker with this message
    queues = instance.app.amqp.queues
    if topology is not None:
        # The backend consumes each handler's own queue itself (RabbitMQ: a consumer bootstep
        # added by prepare_worker, with the owner's queue arguments). select_add(name) would
        # add a plain classic Queue of that name and replace a Queue object the user declared;
        # an event queue -Q names is taken out of Celery's own consumer for the same reason.
        every = _selection.event_queue_names(_selection.handler_queues(bus))
        named = _selection.of(instance.app).named & every
        if named:
            queues.deselect(sorted(named))
        return
    # Consume the service's event queues in addition to whatever the worker was told to
    # consume, so that plain `celery -A svc worker` receives deliveries; -Q and -X choose
    # among them (_selection.py).
    for queue in _selection.consumed_queues(bus):
        queues.select_add(queue)


_running: list[Recovery] = []


def _on_worker_ready(sender: Any = None, **kwargs: Any) -> None:
    app = getattr(sender, "app", None)
    bus = _bus(app) if app is not None else None
    if bus is None:
        return
    bus.middleware.worker_started(bus)
    recovery = bus.backend.recovery
    if recovery is None:
        return
    recovery.start(bus)
    _running.append(recovery)


def _on_worker_shutdown(sender: Any = None, **kwargs: Any) -> None:
    app = getattr(sender, "app", None)
    bus = _bus(app) if app is not None else None
    if bus is not None:
        bus.middleware.worker_stopping(bus)
    for recovery in _running:
        recovery.stop()
    _running.clear()


_connected = False


def connect() -> None:
    """Connect the worker hooks to Celery's signals (once per process; each bus calls it)."""
    global _connected
    if _connected:
        return
    _connected = True
    signals.celeryd_init.connect(_on_worker_init, weak=False)
    signals.celeryd_after_setup.connect(_on_worker_setup, weak=False)
    signals.worker_ready.connect(_on_worker_ready, weak=False)
    signals.worker_shutdown.connect(_on_worker_shutdown, weak=False)
