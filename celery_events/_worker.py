"""What a service's ``celery worker`` does for its bus.

Before the worker is built (``celeryd_init``): use the screening Redis transport, make the
broker's visibility timeout longer than any retry wait plus handler time limit, prefetch one
message per process unless the user chose otherwise, name handler retries' task-sent events
like their deliveries, and add the start-up check bootstep. After it is built, before it
consumes (``celeryd_after_setup``): add the service's event queues. The bootstep then, before
the worker consumes or says "ready", checks the bus (a visibility timeout the user set too
short, atomic handlers without a transaction runner, a registry it cannot reach) and records
the service's subscriptions; if any of that fails, the worker logs one error saying what to fix
and exits with status 1. (Celery's signal dispatch logs and swallows a receiver's exception, so
a check in a signal receiver cannot stop a worker; a bootstep's ``SystemExit`` does.) Once it
runs (``worker_ready``): look for lost deliveries every ``sweep_interval`` seconds, and put back
on their queues the unacked messages of worker processes that died (``_liveness.py``).
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import TYPE_CHECKING, Any

from celery import bootsteps, signals

from . import _plainjson, _redis
from ._liveness import Reaper
from .deadletters import DeadLetter, Reason, new_letter
from .errors import CeleryEventsError, ConfigurationError

if TYPE_CHECKING:
    from .bus import EventBus

log = logging.getLogger(__name__)

TRANSPORT = "celery_events._transport:Transport"
CELERY_DEFAULT_PREFETCH = 4
# Extra room on top of the longest retry wait plus handler time limit.
VISIBILITY_MARGIN = 10.0


def _bus(app: Any) -> EventBus | None:
    from .bus import _BUSES

    return _BUSES.get(app)


def needed_visibility_timeout(bus: EventBus) -> float:
    """The shortest Redis visibility timeout under which no delivery runs twice."""
    longest = max(
        (h.retry.backoff_max + h.time_limit for h in bus.handlers), default=0.0
    )
    return longest + VISIBILITY_MARGIN


def configure_worker(bus: EventBus) -> None:
    """Apply the delivery-protecting worker settings to the bus's app (see module doc).

    Raises :class:`ConfigurationError` (after applying the rest) when the user's own
    ``visibility_timeout`` is too short for the bus's handlers.
    """
    conf = bus.app.conf
    broker = _redis.first_broker_url(conf.broker_url)
    if not _redis.is_redis_url(broker):
        return
    if not conf.broker_transport:
        conf.broker_transport = TRANSPORT
    elif conf.broker_transport != TRANSPORT:
        log.warning(
            "celery-events: broker_transport is %r, so unreadable items on event queues are not"
            " screened and can stop the worker",
            conf.broker_transport,
        )
    options = dict(conf.broker_transport_options or {})
    if options.get("visibility_timeout") is None:
        options["visibility_timeout"] = max(3600.0, needed_visibility_timeout(bus))
        conf.broker_transport_options = options
    if conf.worker_prefetch_multiplier == CELERY_DEFAULT_PREFETCH:
        conf.worker_prefetch_multiplier = 1
    check_visibility_timeout(bus)


def check_visibility_timeout(bus: EventBus) -> None:
    """Raise :class:`ConfigurationError` if the broker's visibility timeout is too short."""
    conf = bus.app.conf
    if not _redis.is_redis_url(_redis.first_broker_url(conf.broker_url)):
        return
    current = (conf.broker_transport_options or {}).get("visibility_timeout")
    needed = needed_visibility_timeout(bus)
    if current is not None and float(current) < needed:
        raise ConfigurationError(
            f"broker_transport_options['visibility_timeout'] is {current} s, but a delivery of"
            f" service {bus.service!r} may wait up to {needed:.0f} s (longest retry_backoff_max"
            f" plus handler time limit plus {VISIBILITY_MARGIN:.0f} s). Redis would hand it to"
            f" a second worker meanwhile. Raise visibility_timeout to at least {needed:.0f}, or"
            " lower retry_backoff_max / time_limit."
        )


def check_worker(bus: EventBus) -> None:
    """Raise :class:`CeleryEventsError` if ``bus``'s worker could not do its job.

    Run by the start-up bootstep before the worker consumes; raises what the worker must not
    start with, and records the service's subscriptions (``register_on_worker_start``).
    """
    check_visibility_timeout(bus)
    atomic = [h.task_name for h in bus.handlers if h.atomic]
    if atomic and bus.transaction_runner is None:
        raise ConfigurationError(
            f"Handlers {', '.join(atomic)} are atomic=True, but the bus of service"
            f" {bus.service!r} has no transaction runner. Add 'celery_events.contrib.django' to"
            " INSTALLED_APPS, or drop atomic=True."
        )
    # Made now so that a broker with no registry of its own (and no registry_url) stops here.
    registry = bus.registry
    if bus.settings.register_on_worker_start:
        subscriptions = bus.register()
        log.info(
            "celery-events: service %r consumes %s with %d subscription(s)",
            bus.service,
            ", ".join(bus.queues) or "no event queue",
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


def name_retries_like_deliveries(bus: EventBus) -> None:
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
    # The blueprint is built after this signal, so the step is part of this worker.
    instance.app.steps["worker"].add(StartupCheck)
    name_retries_like_deliveries(bus)
    try:
        configure_worker(bus)
    except ConfigurationError:
        pass  # the start-up check refuses the worker with this message


def _on_worker_setup(sender: str, instance: Any, **kwargs: Any) -> None:
    bus = _bus(instance.app)
    if bus is None:
        return
    # Consume the service's event queues in addition to whatever the worker was told to
    # consume, so that plain `celery -A svc worker` receives deliveries.
    queues = instance.app.amqp.queues
    for queue in bus.queues:
        queues.select_add(queue)


class Sweeper:
    """Finds this service's lost deliveries and sends them again (see ``_inbox.py``)."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="celery-events-sweeper", daemon=True)
        self._token = uuid.uuid4().hex
        options = bus.app.conf.broker_transport_options or {}
        prefix = options.get("global_keyprefix", "")
        self.unacked_key = prefix + options.get("unacked_key", "unacked")
        self.lock_key = f"{bus.settings.key_prefix}sweeper:{bus.service}"
        self.reaper = Reaper(
            bus.inbox.client,
            bus.settings.key_prefix,
            prefix,
            options.get("unacked_key", "unacked"),
            options.get("unacked_index_key", "unacked_index"),
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        interval = self.bus.settings.sweep_interval
        while not self._stop.wait(interval):
            try:
                self.sweep_once()
            except Exception as exc:  # Redis restarting, say; the next round tries again
                log.warning("celery-events: sweep for lost deliveries failed: %s", exc)

    def sweep_once(self) -> int:
        """One round; returns how many lost deliveries were sent again."""
        self.reap_dead_workers()
        client = self.bus.inbox.client
        settings = self.bus.settings
        # One sweeper per service at a time; the lock outlives a dead worker by one interval.
        lock_ms = int(settings.sweep_interval * 2000)
        if not client.set(self.lock_key, self._token, nx=True, px=lock_ms):
            if client.get(self.lock_key) != self._token.encode():
                return 0
            client.pexpire(self.lock_key, lock_ms)
        swept = self.bus.inbox.sweep(
            unacked_key=self.unacked_key,
            redelivery_timeout=settings.redelivery_timeout,
            max_redeliveries=settings.max_deliveries,
            postpone=settings.sweep_interval,
        )
        resent = swept.resent
        if resent:
            log.warning(
                "celery-events: sent %d lost delivery(ies) of service %r again",
                resent,
                self.bus.service,
            )
        for entry in swept.given_up:
            self.bus.dead_letters.add(
                new_letter(
                    service=self.bus.service,
                    reason=Reason.LOST_TOO_OFTEN,
                    error_type="DeliveryLost",
                    error_message=(
                        f"The delivery was lost {entry.get('r')} times (its message vanished"
                        " before a worker finished it) and was given up."
                    ),
                    handler=_text_or_none(entry.get("h")),
                    envelope=_envelope_of(entry.get("m")),
                    queue=_text_or_none(entry.get("q")),
                    raw=str(entry.get("m", "")).encode(),
                )
            )
        for task_id, raw in swept.unreadable:
            self.bus.dead_letters.add(_unreadable_entry_letter(self.bus.service, task_id, raw))
        return resent

    def reap_dead_workers(self) -> int:
        """Put the unacked messages of dead worker processes back on their queues.

        Every worker's sweeper does this, whatever its service, outside the service's lock:
        the script is atomic, so each message is restored once, and a dead worker's messages
        need not wait for its service's lock to expire. It runs before the lost-delivery sweep,
        which then finds them in their queues rather than held by the dead worker.
        """
        restored = self.reaper.reap()
        if restored:
            log.warning(
                "celery-events: put %d message(s) held by dead worker process(es) back on"
                " their queues",
                restored,
            )
        return restored


def _unreadable_entry_letter(service: str, task_id: str, raw: bytes) -> DeadLetter:
    """The dead letter keeping a ledger entry the sweep could not read, with whatever of the
    delivery can still be read from it (it may be replayed if its envelope and handler can)."""
    try:
        entry = _plainjson.loads(raw)
    except ValueError:
        entry = None
    fields = entry if isinstance(entry, dict) else {}
    return new_letter(
        service=service,
        reason=Reason.UNREADABLE_LEDGER_ENTRY,
        error_type="UnreadableLedgerEntry",
        error_message=(
            f"The lost-delivery ledger entry of task {task_id or '(unknown)'} is not what the"
            " fan-out writes (JSON with string q, m, e, h and a number r), so it could not be"
            " checked or sent again; it was taken out of the ledger and kept here, raw."
        ),
        handler=_text_or_none(fields.get("h")),
        envelope=_envelope_of(fields.get("m")),
        queue=_text_or_none(fields.get("q")),
        task_id=task_id or None,
        raw=raw,
    )


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _envelope_of(payload: object) -> dict[str, Any] | None:
    import base64
    import json

    try:
        message = json.loads(str(payload))
        body = json.loads(base64.b64decode(message["body"]))
        envelope = body[0][0]
    except Exception:
        return None
    return envelope if isinstance(envelope, dict) else None


_sweepers: dict[int, Sweeper] = {}


def _on_worker_ready(sender: Any = None, **kwargs: Any) -> None:
    app = getattr(sender, "app", None)
    bus = _bus(app) if app is not None else None
    if bus is None or bus.fanout.__class__.__name__ != "RedisFanout":
        return
    sweeper = Sweeper(bus)
    _sweepers[id(bus)] = sweeper
    sweeper.start()


def _on_worker_shutdown(sender: Any = None, **kwargs: Any) -> None:
    for sweeper in _sweepers.values():
        sweeper.stop()
    _sweepers.clear()


signals.celeryd_init.connect(_on_worker_init, weak=False)
signals.celeryd_after_setup.connect(_on_worker_setup, weak=False)
signals.worker_ready.connect(_on_worker_ready, weak=False)
signals.worker_shutdown.connect(_on_worker_shutdown, weak=False)
