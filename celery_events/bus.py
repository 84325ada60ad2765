"""The event bus: ``publish`` and ``subscribe`` for one service's Celery app.

Delivery guarantee: at least once. Each subscription gets its own Celery task message, so each
delivery has its own task id, retries and failure. There is no ordering across subscribers, and
a handler may see an event twice after a crash, so handlers should be idempotent.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from celery import Celery

from . import _redis
from ._delivery import (
    Handler,
    HandlerFunc,
    RetryPolicy,
    TransactionRunner,
    current_effects,
    current_event,
    register_task,
)
from ._fanout import Fanout, KombuFanout, RedisFanout
from ._inbox import Inbox
from ._messages import TaskMessage, build_messages, encode_body
from ._task_events import enable_task_events
from .deadletters import DeadLetterStore, ReplayError
from .envelope import Event, check_ids, encode_data
from .errors import (
    CeleryEventsError,
    ConfigurationError,
    InvalidEnvelope,
    InvalidEventData,
    NoSubscribersError,
    PublishError,
    RegistryError,
)
from .names import validate_name, validate_pattern
from .registry import Registry, Subscription
from .settings import Settings, is_seconds, validate_service_name

__all__ = ["EventBus", "PublishResult", "Delivery"]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=HandlerFunc)

_HANDLER_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

_BUSES: weakref.WeakKeyDictionary[Celery, EventBus] = weakref.WeakKeyDictionary()
_BUSES_LOCK = threading.Lock()


@dataclass(frozen=True)
class Delivery:
    """One event sent to one handler: one Celery task."""

    service: str
    #: The handler's Celery task name.
    handler: str
    queue: str
    task_id: str


@dataclass(frozen=True)
class PublishResult:
    """What a publish sent: the event and one delivery per matching subscription.

    ``deferred`` is true when the event was not sent yet but will be: the Django integration
    sends it after the current database transaction commits, or writes it to the outbox. The
    event (and its id) is final then, and ``deliveries`` is empty.
    """

    event: Event
    deliveries: tuple[Delivery, ...] = field(default_factory=tuple)
    deferred: bool = False


class EventBus:
    """Publish events from, and subscribe handlers in, the Celery app of one service.

    >>> app = Celery("orders", broker="redis://127.0.0.1:6379/0")
    >>> bus = EventBus(app, service="orders")
    >>> @bus.subscribe("user.registered")
    ... def welcome_order(event: Event) -> None:
    ...     print(event.data["user_id"])
    >>> bus.publish("order.created", {"order_id": 1})            # doctest: +SKIP

    ``celery -A orders worker`` then consumes ``events.orders`` and records the service's
    subscriptions in the registry before it starts consuming. Keyword settings are listed in
    :class:`~celery_events.settings.Settings` and the README.
    """

    def __init__(self, app: Celery, service: str, **settings: Any) -> None:
        self.app = app
        self.service = validate_service_name(service)
        self.settings = Settings.from_options(settings)
        self._handlers: dict[str, Handler] = {}
        self._lock = threading.RLock()
        self._registry: Registry | None = None
        self._fanout: Fanout | None = None
        self._published_names: set[str] = set()
        self._inbox: Inbox | None = None
        self._dead_letters: DeadLetterStore | None = None
        #: Set by the Django integration: runs ``atomic=True`` handlers in a database
        #: transaction that records the delivery in its inbox table.
        self.transaction_runner: TransactionRunner | None = None
        with _BUSES_LOCK:
            existing = _BUSES.get(app)
            if existing is not None:
                raise ConfigurationError(
                    f"The Celery app {app.main!r} already has an event bus for service"
                    f" {existing.service!r}; a second EventBus(app, service={service!r}) would"
                    " split its handlers. Create one bus per app and import it where needed"
                    " (celery_events.bus_for(app) returns it)."
                )
            _BUSES[app] = self
        if self.settings.task_events:
            enable_task_events(app)
        from . import _worker  # noqa: F401  (connects the worker start-up hook)

    # -- subscribing ------------------------------------------------------------------------

    def subscribe(
        self,
        pattern: str,
        *,
        name: str | None = None,
        queue: str | None = None,
        max_retries: int | None = None,
        retry_backoff: float | None = None,
        retry_backoff_max: float | None = None,
        retry_jitter: bool | None = None,
        retry_for: tuple[type[BaseException], ...] = (Exception,),
        dont_retry_for: tuple[type[BaseException], ...] = (),
        inbox: bool = True,
        atomic: bool = False,
        time_limit: float | None = None,
        **task_options: Any,
    ) -> Callable[[F], F]:
        """Subscribe the decorated function to events whose name matches ``pattern``.

        ``pattern`` is an event name or uses ``*`` (one word) and ``#`` (zero or more words).
        ``name`` is the handler's name, unique in the service (default: the function's name);
        its Celery task is ``{service}.{name}``. ``queue`` overrides the service's queue.

        Failures are retried ``max_retries`` times with exponential backoff
        (``retry_backoff * 2**n`` seconds, at most ``retry_backoff_max``, with full jitter
        unless ``retry_jitter=False``) for exceptions in ``retry_for`` and not in
        ``dont_retry_for``; then the delivery becomes a dead letter. Defaults come from the
        bus settings. ``inbox=False`` turns off skipping of already handled deliveries.
        ``atomic=True`` runs the handler in a database transaction that records the delivery
        (needs the Django integration). ``time_limit`` is the hard limit in seconds. Other
        keywords are Celery task options (``rate_limit``, ``soft_time_limit``, ...).
        The function is returned unchanged, so it can still be called directly in tests.

        >>> @bus.subscribe("user.*", max_retries=3, dont_retry_for=(KeyError,))  # doctest: +SKIP
        ... def audit(event: Event) -> None: ...
        """
        validate_pattern(pattern)
        if queue is not None and (not isinstance(queue, str) or not queue):
            raise ConfigurationError(f"A handler's queue must be a non-empty string, not {queue!r}.")
        settings = self.settings
        policy = RetryPolicy(
            max_retries=settings.max_retries if max_retries is None else max_retries,
            backoff=settings.retry_backoff if retry_backoff is None else retry_backoff,
            backoff_max=(
                settings.retry_backoff_max if retry_backoff_max is None else retry_backoff_max
            ),
            jitter=settings.retry_jitter if retry_jitter is None else retry_jitter,
            retry_for=_exception_types("retry_for", retry_for),
            dont_retry_for=_exception_types("dont_retry_for", dont_retry_for),
        )
        _check_policy(pattern, policy)
        limit = settings.handler_time_limit if time_limit is None else time_limit
        if not is_seconds(limit):
            raise ConfigurationError(
                f"@bus.subscribe({pattern!r}, time_limit={limit!r}): the time limit must be a"
                " finite, positive number of seconds."
            )

        def decorator(func: F) -> F:
            if not callable(func):
                raise ConfigurationError(f"@bus.subscribe({pattern!r}) must decorate a function.")
            handler_name = str(name or getattr(func, "__name__", ""))
            if not _HANDLER_NAME_RE.match(handler_name):
                raise ConfigurationError(
                    f"{handler_name!r} cannot name a handler; pass a name of letters, digits"
                    f" and '_': @bus.subscribe({pattern!r}, name='...')."
                )
            task_name = f"{self.service}.{handler_name}"
            with self._lock:
                if task_name in self._handlers:
                    other = self._handlers[task_name].func
                    raise ConfigurationError(
                        f"A handler named {handler_name!r} is already subscribed in service"
                        f" {self.service!r} (by {other.__module__}.{other.__qualname__}). Give"
                        f" one of them another name: @bus.subscribe({pattern!r}, name='...')."
                    )
                # app._tasks, unlike app.tasks, does not finalize the app at import time.
                if task_name in self.app._tasks:
                    raise ConfigurationError(
                        f"The Celery app already has a task named {task_name!r}; give the"
                        f" handler another name: @bus.subscribe({pattern!r}, name='...')."
                    )
                handler = Handler(
                    pattern=pattern,
                    func=func,
                    task_name=task_name,
                    queue=queue or self.default_queue,
                    retry=policy,
                    inbox=bool(inbox),
                    atomic=bool(atomic),
                    time_limit=float(limit),
                    task_options=dict(task_options),
                )
                register_task(self.app, self, handler)
                self._handlers[task_name] = handler
            return func

        return decorator

    @property
    def default_queue(self) -> str:
        """The queue of this service's handlers that do not name their own."""
        return self.settings.queue_template.format(service=self.service)

    @property
    def handlers(self) -> list[Handler]:
        """This service's handlers, in the order they were subscribed."""
        return list(self._handlers.values())

    @property
    def handler_names(self) -> frozenset[str]:
        """The Celery task names of this service's handlers."""
        return frozenset(self._handlers)

    @property
    def queues(self) -> list[str]:
        """Every queue this service's worker consumes for its handlers."""
        return sorted({h.queue for h in self._handlers.values()})

    def subscriptions(self) -> list[Subscription]:
        """This service's subscriptions, as :meth:`register` records them."""
        return [
            Subscription(h.pattern, self.service, h.task_name, h.queue)
            for h in self._handlers.values()
        ]

    def register(self) -> list[Subscription]:
        """Record this service's subscriptions in the registry now, replacing its old set.

        Workers do this when they start; call it from deploy scripts and tests.
        """
        subscriptions = self.subscriptions()
        self.registry.register(self.service, subscriptions)
        return subscriptions

    # -- publishing -------------------------------------------------------------------------

    def publish(
        self,
        name: str,
        data: dict[str, Any] | None = None,
        *,
        require_subscribers: bool | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> PublishResult:
        """Publish event ``name`` with ``data`` (a JSON object) to every matching subscription.

        All deliveries go to the broker in one round trip; on Redis every subscriber gets the
        event or none does. Inside a handler, the new event inherits the handled event's
        correlation id and names it as its cause. With no subscriber, no delivery is sent and
        that is logged; ``require_subscribers=True`` raises :class:`NoSubscribersError` instead.

        Raises :class:`InvalidEventName`, :class:`InvalidEventData` (data that is not a JSON
        object, nests deeper than ``max_event_depth``, has a key that is not a string or a
        value JSON cannot hold) or :class:`EventTooLarge` for bad data,
        :class:`InvalidEnvelope` for a ``correlation_id`` or ``causation_id`` that is not a
        string, and :class:`PublishError` when the broker refuses the event or does not take
        it within ``publish_timeout``. In all these cases nothing was sent, except for a
        :class:`PublishError` whose message says that Redis was reached but its reply lost:
        the deliveries may then have been queued, and publishing the same event again
        (:meth:`publish_event`) is the safe retry.

        >>> result = bus.publish("user.registered", {"user_id": 7})   # doctest: +SKIP
        >>> [d.handler for d in result.deliveries]                   # doctest: +SKIP
        ['orders.welcome_order', 'notifications.greet']
        """
        event, data_json = self._make_event(name, data, correlation_id, causation_id)
        return self._send(event, data_json, require_subscribers)

    def new_event(
        self,
        name: str,
        data: dict[str, Any] | None = None,
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Event:
        """Validate ``name`` and ``data`` and make the event :meth:`publish` would send.

        Inside a handler the event inherits the handled event's correlation id and names it as
        its cause. Raises what :meth:`publish` raises for bad input; sends nothing.

        >>> event = bus.new_event("order.created", {"order_id": 1})   # doctest: +SKIP
        >>> bus.publish_event(event)                                  # doctest: +SKIP
        """
        return self._make_event(name, data, correlation_id, causation_id)[0]

    def _make_event(
        self,
        name: str,
        data: dict[str, Any] | None,
        correlation_id: str | None,
        causation_id: str | None,
    ) -> tuple[Event, str]:
        validate_name(name)
        # Before a handled event's ids fill in missing ones: 0 or False must be refused, not
        # replaced, and a non-string id would make every subscriber dead-letter the event.
        check_ids(correlation_id=correlation_id, causation_id=causation_id)
        data = {} if data is None else data
        data_json = encode_data(
            name, data, self.settings.max_event_size, self.settings.max_event_depth
        )
        cause = current_event.get()
        if cause is not None:
            correlation_id = correlation_id or cause.correlation_id
            causation_id = causation_id or cause.id
        event = Event.create(
            name,
            data,
            source=self.service,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )
        return event, data_json

    def publish_event(
        self, event: Event, *, require_subscribers: bool | None = None
    ) -> PublishResult:
        """Send an already made ``event`` as it is: its id, time, correlation and cause are kept.

        This is how an outbox relay re-sends a stored event, so that a resend carries the same
        id and subscribers' inboxes skip it. Same errors and guarantees as :meth:`publish`, and
        :class:`InvalidEnvelope` when the event's attributes could not be sent (see
        :meth:`Event.validate`).
        """
        if not isinstance(event, Event):
            raise InvalidEnvelope(
                f"publish_event takes an Event (from bus.new_event or Event.create), not"
                f" {type(event).__name__}. Use bus.publish(name, data) to publish data."
            )
        event.validate()
        data_json = encode_data(
            event.name, event.data, self.settings.max_event_size, self.settings.max_event_depth
        )
        return self._send(event, data_json, require_subscribers)

    def _send(
        self, event: Event, data_json: str, require_subscribers: bool | None
    ) -> PublishResult:
        name = event.name
        try:
            subscriptions = self.registry.match(name)
        except RegistryError as exc:
            raise PublishError(f"Could not publish {name!r}: {exc}") from exc
        if not subscriptions:
            must_raise = (
                self.settings.require_subscribers
                if require_subscribers is None
                else require_subscribers
            )
            if must_raise:
                raise NoSubscribersError(
                    f"No service subscribes to {name!r}, so the event was not sent. Start a"
                    " subscriber (or run its register command) first, or publish without"
                    " require_subscribers."
                )
            log.info("celery-events: no subscriber for %r (event %s); nothing sent", name, event.id)
            self._record_published_alone(name)
            return PublishResult(event)

        parent = self.app.current_worker_task
        parent_id = root_id = None
        if parent is not None:
            parent_id = parent.request.id
            root_id = parent.request.root_id or parent.request.id
        messages = self._messages(
            event.to_envelope(),
            data_json,
            [(s.handler, s.queue, s.service) for s in subscriptions],
            parent_id=parent_id,
            root_id=root_id,
        )
        self.fanout.send(messages, self._catalog_entry(name))
        self._published_names.add(name)
        return PublishResult(
            event,
            tuple(
                Delivery(s.service, s.handler, s.queue, m.task_id)
                for s, m in zip(subscriptions, messages, strict=True)
            ),
        )

    def _catalog_entry(self, name: str) -> tuple[str, str, str] | None:
        # The catalog learns who publishes what from the first publish of each name in each
        # process, written in the same round trip as the deliveries.
        if name in self._published_names or not self._fanout_shares_registry():
            return None
        return (self.registry.published_key, f"{self.service} {name}", str(time.time()))

    def _record_published_alone(self, name: str) -> None:
        if name in self._published_names:
            return
        try:
            self.registry.client.hset(
                self.registry.published_key, f"{self.service} {name}", str(time.time())
            )
        except Exception as exc:  # the catalog is a convenience; never fail a publish for it
            log.debug("celery-events: could not record %r in the catalog: %s", name, exc)
        else:
            self._published_names.add(name)

    def _fanout_shares_registry(self) -> bool:
        return isinstance(self.fanout, RedisFanout) and self.fanout.client is self.registry.client

    # -- connections ------------------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        """The shared subscription registry (created on first use)."""
        if self._registry is None:
            with self._lock:
                if self._registry is None:
                    self._registry = Registry(
                        self._registry_client(),
                        key_prefix=self.settings.key_prefix,
                        refresh_interval=self.settings.registry_refresh_interval,
                        max_staleness=self.settings.registry_max_staleness,
                    )
        return self._registry

    @property
    def fanout(self) -> Fanout:
        """How deliveries reach the broker (created on first use)."""
        if self._fanout is None:
            with self._lock:
                if self._fanout is None:
                    self._fanout = self._make_fanout()
        return self._fanout

    def _broker_url(self) -> str:
        return _redis.first_broker_url(self.app.conf.broker_url)

    def _registry_client(self) -> Any:
        url = self.settings.registry_url
        if url is None:
            broker = self._broker_url()
            if not _redis.is_redis_url(broker):
                raise ConfigurationError(
                    f"The broker {broker.split('://')[0]!r} is not Redis, so the registry needs"
                    " its own Redis: pass registry_url='redis://host:6379/0' to EventBus."
                )
            if self._registry_is_broker_fanout():
                return self.fanout.client  # type: ignore[attr-defined]
            return self._broker_client(broker)
        # A registry of its own takes its TLS options from its own URL only.
        return _redis.connect(url, self.settings.publish_timeout)

    def _broker_client(self, broker: str) -> Any:
        # The broker's Redis, with the TLS options the app's kombu connection uses.
        return _redis.connect(
            broker, self.settings.publish_timeout, use_ssl=self.app.conf.broker_use_ssl
        )

    def _registry_is_broker_fanout(self) -> bool:
        return isinstance(self.fanout, RedisFanout)

    def _make_fanout(self) -> Fanout:
        broker = self._broker_url()
        if _redis.is_redis_url(broker):
            options = self.app.conf.broker_transport_options or {}
            return RedisFanout(
                self._broker_client(broker),
                self.settings.publish_timeout,
                key_prefix=options.get("global_keyprefix", ""),
                ledger_prefix=self.settings.key_prefix,
                app=self.app,
            )
        return KombuFanout(self.app, self.settings.publish_timeout)

    @property
    def inbox(self) -> Inbox:
        """This service's inbox and delivery bookkeeping (in the broker's Redis if it is one)."""
        if self._inbox is None:
            with self._lock:
                if self._inbox is None:
                    self._inbox = Inbox(
                        self._state_client(), self.service, self.settings.key_prefix
                    )
        return self._inbox

    @property
    def dead_letters(self) -> DeadLetterStore:
        """This service's dead letters: ``list``, ``get``, ``replay``, ``purge``, ``count``."""
        if self._dead_letters is None:
            with self._lock:
                if self._dead_letters is None:
                    self._dead_letters = DeadLetterStore(
                        self._state_client(),
                        self.service,
                        key_prefix=self.settings.key_prefix,
                        limit=self.settings.dead_letter_limit,
                        resend=self._resend,
                        route=self._replay_queue,
                    )
        return self._dead_letters

    def redis_effects(self) -> Any:
        """A Redis pipeline whose commands run only if the current handler succeeds, in one
        transaction with its inbox record: exactly-once effects for Redis writes.

        >>> @bus.subscribe("order.created")                          # doctest: +SKIP
        ... def count(event: Event) -> None:
        ...     bus.redis_effects().incr("orders:created")
        """
        effects = current_effects.get()
        if effects is None:
            raise CeleryEventsError(
                "bus.redis_effects() is only available inside a running handler."
            )
        return effects

    def _state_client(self) -> Any:
        fanout = self.fanout
        if isinstance(fanout, RedisFanout):
            return fanout.client
        return self.registry.client

    def _replay_queue(self, handler: str) -> str:
        """The queue a replay to ``handler`` goes to: that handler's own, if this service
        subscribes it.

        What the service subscribes is this bus's handlers, or, for a bus that declares none
        (an operator's shell), the service's subscriptions in the registry.
        """
        if self._handlers:
            subscribed = {name: h.queue for name, h in self._handlers.items()}
            where = ""
        else:
            subscribed = {
                s.handler: s.queue for s in self.registry.subscriptions() if s.service == self.service
            }
            where = " in the registry"
        queue = subscribed.get(handler)
        if queue is None:
            raise ReplayError(
                f"{handler!r} is not a handler that service {self.service!r} subscribes{where}"
                f" (its handlers are {', '.join(sorted(subscribed)) or 'none'}), so a dead"
                " letter is not replayed to it; purge the dead letter instead."
            )
        return queue

    def _resend(
        self, envelope: dict[str, Any], handler: str, queue: str, service: str | None = None
    ) -> str:
        """Send ``envelope`` again as a fresh delivery to a handler of ``service`` (default:
        this service; the operator CLI replays other services' dead letters).

        For this service the handler must be one of its own and its own queue is used, whatever
        ``queue`` says; for another, ``queue`` must come from that service's subscriptions.
        Raises :class:`ReplayError` for an envelope that is not a valid event.
        """
        if service is None or service == self.service:
            queue = self._replay_queue(handler)
        try:
            event = Event.from_envelope(envelope)
            data_json = encode_data(
                event.name, event.data, self.settings.max_event_size, self.settings.max_event_depth
            )
        except (InvalidEnvelope, InvalidEventData) as exc:
            raise ReplayError(f"The envelope cannot be replayed: {exc}") from exc
        [message] = self._messages(
            envelope,
            data_json,
            [(handler, queue, service or self.service)],
            parent_id=None,
            root_id=None,
        )
        self.fanout.send([message], None)
        return message.task_id

    def _messages(
        self,
        envelope: dict[str, Any],
        data_json: str,
        targets: list[tuple[str, str, str]],
        *,
        parent_id: str | None,
        root_id: str | None,
    ) -> list[TaskMessage]:
        """One task message per ``(handler, queue, service)``, each shown in worker logs and
        Flower as ``event.name → handler``."""
        name = envelope["type"]
        head = {k: v for k, v in envelope.items() if k != "data"}
        return build_messages(
            self.app,
            envelope,
            encode_body(head, data_json),
            [(handler, queue, f"{name} → {handler}", service) for handler, queue, service in targets],
            parent_id=parent_id,
            root_id=root_id,
        )

    def close(self) -> None:
        """Stop the registry's background check and close connections."""
        if self._registry is not None:
            self._registry.close()
        if isinstance(self._fanout, RedisFanout):
            self._fanout.client.close()


def _exception_types(option: str, value: object) -> tuple[type[BaseException], ...]:
    types = value if isinstance(value, tuple) else (value,)
    for item in types:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise ConfigurationError(
                f"{option} must be an exception class or a tuple of them, not {value!r}."
            )
    return types


def _check_policy(pattern: str, policy: RetryPolicy) -> None:
    if isinstance(policy.max_retries, bool) or not isinstance(policy.max_retries, int) or (
        policy.max_retries < 0
    ):
        raise ConfigurationError(
            f"@bus.subscribe({pattern!r}): max_retries must be a whole number >= 0, not"
            f" {policy.max_retries!r}."
        )
    for option, value in (("retry_backoff", policy.backoff), ("retry_backoff_max", policy.backoff_max)):
        if not is_seconds(value):
            raise ConfigurationError(
                f"@bus.subscribe({pattern!r}): {option} must be a finite, positive number of"
                f" seconds, not {value!r}."
            )


def bus_for_queue(queue: str) -> EventBus | None:
    """The bus in this process whose handlers consume ``queue``, if any."""
    for bus in list(_BUSES.values()):
        if any(h.queue == queue for h in bus._handlers.values()):
            return bus
    return None


def any_bus() -> EventBus | None:
    """Some bus of this process (a worker process normally has exactly one)."""
    for bus in list(_BUSES.values()):
        return bus
    return None


def bus_for(app: Celery) -> EventBus:
    """Return the event bus created for ``app``, or raise :class:`ConfigurationError`."""
    bus = _BUSES.get(app)
    if bus is None:
        raise ConfigurationError(
            f"The Celery app {app.main!r} has no event bus; create one with"
            " EventBus(app, service='...')."
        )
    return bus
