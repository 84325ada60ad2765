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
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from celery import Celery

from . import _apublish, _buses, _worker, observability, trust
from ._delivery import (
    Handler,
    HandlerFunc,
    RetryPolicy,
    current_effects,
    register_task,
)
from ._messages import TaskMessage
from ._publish import Publisher
from ._task_events import enable_task_events
from .backends import backend_name, broker_url_of, capabilities_of, open_backend
from .backends.base import Backend, Inbox, StateStore, Transport, check_required
from .contracts import check as contract_checks
from .contracts.middleware import Contracts, ContractsOnReceipt
from .contracts.parameters import read_signature
from .contracts.schemas import schema_from
from .deadletters import DeadLetterStore, ReplayError
from .declarations import COMPATIBILITY_MODES, Declaration
from .envelope import Event, ExtensionValue
from .errors import (
    CeleryEventsError,
    ConfigurationError,
    InvalidEnvelope,
    InvalidEventData,
)
from .middleware import Middleware, MiddlewareChain
from .names import validate_name, validate_pattern
from .registry import Registry, Subscription, queue_arguments
from .results import Delivery, PublishResult
from .settings import Settings, is_seconds, validate_service_name
from .trust.fields import check_paths
from .trust.scopes import Policy

__all__ = ["EventBus", "PublishResult", "Delivery"]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=HandlerFunc)

_HANDLER_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class EventBus:
    """Publish events from, and subscribe handlers in, the Celery app of one service.

    >>> from celery import Celery
    >>> from celery_events import Event, EventBus
    >>> app = Celery("orders", broker="redis://127.0.0.1:6379/0")
    >>> bus = EventBus(app, service="orders")
    >>> @bus.subscribe("user.registered")
    ... def welcome_order(event: Event) -> None:
    ...     print(event.data["user_id"])
    >>> bus.register()          # what `celery -A orders worker` does when it starts
    [Subscription(pattern='user.registered', service='orders', handler='orders.welcome_order', ...)]
    >>> bus.publish("user.registered", {"user_id": 7}).deliveries
    (Delivery(service='orders', handler='orders.welcome_order', queue='events.orders', task_id='...'),)

    ``celery -A orders worker`` then consumes ``events.orders`` and records the service's
    subscriptions in the registry before it starts consuming. Keyword settings are listed in
    :class:`~celery_events.settings.Settings` and on the documentation's Settings page.
    """

    def __init__(
        self,
        app: Celery,
        service: str,
        *,
        middleware: Iterable[Middleware] = (),
        state: StateStore | None = None,
        **settings: Any,
    ) -> None:
        self.app = app
        # A state store of the bus's own (the Django database's) instead of the backend's.
        self._state = state
        self.service = validate_service_name(service)
        self.settings = Settings.from_options(settings)
        # The trust middleware (scopes, encrypted fields, signing) is innermost: it signs
        # what every other middleware made, and is the first to check a delivery. It comes
        # from this service's own settings, never from the registry.
        self._trust = trust.trust_for(self.service, self.settings)
        # Tracing, metrics and trace records, outermost but for the contracts' validation:
        # their spans and records cover what the user's middleware does, and the trace
        # context is in the event before it is deferred or signed. (Their constructors only
        # keep the bus, which is not fully made yet.)
        self._publisher = Publisher(
            self,
            [*observability.middleware_for(self), *middleware, *self._trust.middleware],
            self._trust.guard,
        )
        self._handlers: dict[str, Handler] = {}
        # Added to the chain (outermost) by the first handler or declared schema: a bus with
        # neither keeps an empty chain.
        self._contracts: ContractsOnReceipt | None = None
        # By name, then version (None: a declaration without a schema).
        self._declarations: dict[str, dict[int | None, Declaration]] = {}
        self._lock = threading.RLock()
        self._backend: Backend | None = None
        self._transport: Transport | None = None
        self._registry: Registry | None = None
        self._published_names: set[str] = set()
        self._inbox: Inbox | None = None
        self._dead_letters: DeadLetterStore | None = None
        if self.settings.require and app.configured:
            # The broker URL is final: a required capability the backend lacks fails now. (An
            # app configured later is checked when the backend is made, at the latest when
            # its worker starts.)
            self._check_required(backend_name(broker_url_of(app)))
        existing = _buses.add(app, self)
        if existing is not None:
            raise ConfigurationError(
                f"The Celery app {app.main!r} already has an event bus for service"
                f" {existing.service!r}; a second EventBus(app, service={service!r}) would"
                " split its handlers. Create one bus per app and import it where needed"
                " (celery_events.bus_for(app) returns it)."
            )
        if self.settings.task_events:
            enable_task_events(app)
        # The worker start-up hooks find this bus through _buses.
        _worker.connect()

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
        sensitive: Iterable[str] = (),
        versions: Iterable[int] | None = None,
        schema: Any = None,
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
        (needs the Django integration). ``time_limit`` is the hard limit in seconds.
        ``sensitive`` names fields of the data (dotted paths, such as ``"address.street"``)
        that this worker masks as ``"***"`` wherever it shows a delivery's arguments (its log
        lines, Flower, its retries), whatever the publisher declared; encryption is the
        publisher's declaration's (:meth:`declare`).
        ``versions`` lists the versions of the matching events the handler accepts (default:
        every version): during a migration to a new version, each handler gets the version it
        accepts. ``schema`` (a JSON Schema or a pydantic model) is what the handler itself
        accepts; a delivery whose data breaks it is dead-lettered ``schema_mismatch`` unrun. A
        handler whose parameter is annotated with a pydantic model gets ``event.data`` parsed
        into it, and accepts that model's schema. Other keywords are Celery task options
        (``rate_limit``, ``soft_time_limit``, ...).
        The function is returned unchanged, so it can still be called directly in tests.

        >>> @bus.subscribe("payment.*", max_retries=3, dont_retry_for=(KeyError,))
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
        masked = check_paths(sensitive, f"@bus.subscribe({pattern!r})")
        accepted = _versions(versions, f"@bus.subscribe({pattern!r})")
        accepts = None if schema is None else schema_from(schema, f"@bus.subscribe({pattern!r})")
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
            invoke, model = read_signature(func, f"@bus.subscribe({pattern!r}) of {handler_name}")
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
                    sensitive=masked,
                    versions=accepted,
                    accepts=accepts or model,
                    invoke=invoke,
                )
                register_task(self.app, self, handler)
                self._handlers[task_name] = handler
                if self._contracts is None:
                    self._use_contracts(ContractsOnReceipt(self))
            return func

        return decorator

    def declare(
        self,
        name: str,
        *,
        schema: Any = None,
        version: int | None = None,
        compatibility: str = "BACKWARD",
        dataschema: str | None = None,
        sensitive: Iterable[str] = (),
    ) -> Declaration:
        """Declare that this service publishes ``name``: its schema, version and sensitive
        fields.

        ``schema`` is a JSON Schema (draft 2020-12, a dict) or a pydantic v2 model class: each
        event of the name is validated against it when it is published
        (:class:`SchemaError`, nothing sent) and when it is received (dead letter
        ``schema_mismatch``). ``version`` (default 1 with a schema) is the contract's
        version: a new schema of the same version must keep ``compatibility`` with the ones
        registered before it (``BACKWARD``, the default; ``FORWARD``, ``FULL``, their
        ``_TRANSITIVE`` forms, or ``NONE``), checked when the service registers; a breaking
        change is a new version, declared beside the old one while subscribers move. Events
        carry ``dataschema`` (default ``urn:celery-events:schema:{name}:{version}``).

        ``sensitive`` lists fields of the data as dotted paths (``"email"``,
        ``"address.street"``; through a list, the path applies to each item). Every event of
        ``name`` this bus publishes carries them (its ``sensitive`` extension attribute): every
        subscriber's worker shows them as ``"***"`` (Flower, Celery's log lines), and, when
        this service has ``encryption_keys``, they are encrypted before the event is sent and
        decrypted for each handler.

        Declare each name and version once, at import time; declaring it again the same way
        is allowed, differently a :class:`ConfigurationError`.

        >>> from pydantic import BaseModel
        >>> class OrderCreated(BaseModel):
        ...     order_id: int
        >>> bus.declare("order.created", schema=OrderCreated, version=2)
        Declaration(name='order.created', sensitive=(), schema=<Schema ... from OrderCreated>, version=2, ...)
        >>> bus.declare("user.registered", sensitive=["email", "address.street"]).sensitive
        ('email', 'address.street')
        """
        validate_name(name)
        where = f"bus.declare({name!r})"
        found = None if schema is None else schema_from(schema, where)
        if version is None and found is not None:
            version = 1
        if version is not None:
            (version,) = _versions([version], where)
        if compatibility not in COMPATIBILITY_MODES:
            raise ConfigurationError(
                f"{where}: compatibility={compatibility!r} is not a mode; use one of"
                f" {', '.join(COMPATIBILITY_MODES)}."
            )
        if dataschema is not None and version is None:
            raise ConfigurationError(f"{where}: a dataschema names a version; give version=.")
        if dataschema is not None:
            # Checked as the envelope will check it.
            Event.create(name, {}, source=self.service, dataschema=dataschema)
        declaration = Declaration(
            name,
            check_paths(sensitive, where),
            schema=found,
            version=version,
            compatibility=compatibility,
            uri=dataschema,
            fingerprint=None if found is None else found.fingerprint,
        )
        with self._lock:
            versions = self._declarations.get(name, {})
            existing = versions.get(version)
            if existing is not None and existing != declaration:
                raise ConfigurationError(
                    f"{name!r}{'' if version is None else f' version {version}'} is already"
                    f" declared as {existing!r}; declare each event name and version once, with"
                    " all its fields."
                )
            if versions and (version is None) != (None in versions):
                raise ConfigurationError(
                    f"{where}: {name!r} is declared both with and without a version; give every"
                    " declaration of a name a version (and a schema), or none."
                )
            self._declarations[name] = {**versions, version: declaration}
            paths = [p for d in self._declarations[name].values() for p in d.sensitive]
            if paths:
                self._publisher.sensitive[name] = ",".join(dict.fromkeys(paths))
            self._publisher.declared[name] = self._declarations[name]
            if found is not None:
                contracts = self._contracts
                if isinstance(contracts, Contracts):
                    contracts.add(declaration)
                else:  # made with every declaration so far, this one included
                    self._use_contracts(Contracts(self))
        return declaration

    def _use_contracts(self, contracts: ContractsOnReceipt) -> None:
        """Put ``contracts`` on the chain as its outermost middleware, instead of the bus's
        earlier one: checks on receipt for a bus with handlers, and at publish too once it
        declares a schema (a bus with neither keeps an empty chain)."""
        current = self._contracts
        chain = self._publisher.chain
        chain._build((contracts, *(m for m in chain.middleware if m is not current)))
        self._contracts = contracts

    @property
    def declarations(self) -> list[Declaration]:
        """The event names and versions this service declared (:meth:`declare`), sorted by
        name and version."""
        return sorted(
            (d for versions in self._declarations.values() for d in versions.values()),
            key=lambda d: (d.name, d.version or 0),
        )

    @property
    def default_queue(self) -> str:
        """The queue of this service's handlers that do not name their own."""
        return self.settings.queue_template.format(service=self.service)

    @property
    def handlers(self) -> list[Handler]:
        """This service's handlers (:class:`~celery_events.Handler`), in the order they were
        subscribed."""
        return list(self._handlers.values())

    @property
    def handler_names(self) -> frozenset[str]:
        """The Celery task names of this service's handlers."""
        return frozenset(self._handlers)

    @property
    def queues(self) -> list[str]:
        """Every queue this service's worker consumes for its handlers."""
        return sorted({h.queue for h in self._handlers.values()})

    @property
    def longest_delivery_wait(self) -> float:
        """The longest, in seconds, a delivery of this service may wait for a retry and then
        run: its handlers' largest ``retry_backoff_max`` plus time limit (0 without one)."""
        return max(
            (h.retry.backoff_max + h.time_limit for h in self._handlers.values()), default=0.0
        )

    def subscriptions(self) -> list[Subscription]:
        """This service's subscriptions, as :meth:`register` records them (on RabbitMQ, each
        handler's own queue and the arguments it is declared with)."""
        topology = self.backend.topology
        subscriptions = []
        for h in self._handlers.values():
            queue, arguments = h.queue, None
            if topology is not None:
                queue, arguments = topology.queue_of(h.queue, h.task_name, self.service)
            subscriptions.append(
                Subscription(
                    h.pattern,
                    self.service,
                    h.task_name,
                    queue,
                    queue_arguments=queue_arguments(arguments),
                    versions=h.versions,
                    accepts=None if h.accepts is None else h.accepts.document,
                )
            )
        return subscriptions

    def _delivery_queue(self, handler: Handler, routing_key: str | None) -> str:
        """The broker queue a delivery of ``handler`` sent with ``routing_key`` came from (on
        RabbitMQ the routing key is the event name: the handler's own queue)."""
        topology = self.backend.topology
        if topology is None:
            return routing_key or handler.queue
        return topology.queue_of(handler.queue, handler.task_name, self.service)[0]

    def _retry_route(self, handler: Handler, countdown: float) -> tuple[float, dict[str, Any]]:
        """The countdown and ``Task.retry`` options of a retry of ``handler`` (on RabbitMQ:
        to its own queue alone, never through the events exchange again)."""
        topology = self.backend.topology
        if topology is None:
            return countdown, {}
        return topology.retry_options(handler.queue, handler.task_name, countdown)

    def register(self) -> list[Subscription]:
        """Record this service's subscriptions and declarations in the registry now,
        replacing its old record.

        Each declaration with a schema is first checked against the schemas registered for
        its name and version (by any service) under its compatibility mode: one that breaks
        them raises :class:`IncompatibleSchema` with a readable diff, and nothing is
        recorded. A new version is not checked against the others. Each recorded declaration
        keeps the schemas this service registered before for its name and version, which the
        ``_TRANSITIVE`` modes check against.

        Workers do this when they start (and do not start when it fails); call it from deploy
        scripts (``celery eventbus register``) and tests.

        >>> bus.register()
        [Subscription(pattern='user.registered', ...), Subscription(pattern='payment.*', ...)]
        """
        self.check_subscriptions()
        subscriptions = self.subscriptions()
        registry = self.registry
        declarations = self.declarations
        # Read only when there is something to check, so a plain subscriber pays nothing.
        registered = registry.declarations() if declarations else []
        recorded = contract_checks.to_register(self.service, declarations, registered)
        registry.register(self.service, subscriptions, recorded)
        return subscriptions

    @property
    def scope_policy(self) -> Policy | None:
        """Who may publish and subscribe to which names, from this service's own settings
        (``publish_scopes``, ``subscribe_scopes``, ``protected_names``); ``None`` when none is
        set."""
        return self._trust.policy

    def check_subscriptions(self) -> None:
        """Raise :class:`SubscriptionNotAllowed` if this service's scopes forbid one of its
        handlers' patterns. :meth:`register` and the worker's start-up check call it: a worker
        with such a handler does not start."""
        policy = self._trust.policy
        if policy is not None:
            policy.check_subscriptions(
                self.service, (h.pattern for h in self._handlers.values())
            )

    # -- publishing -------------------------------------------------------------------------

    def publish(
        self,
        name: str,
        data: dict[str, Any] | None = None,
        *,
        require_subscribers: bool | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        extensions: Mapping[str, ExtensionValue] | None = None,
        subject: str | None = None,
        dataschema: str | None = None,
        version: int | None = None,
    ) -> PublishResult:
        """Publish event ``name`` with ``data`` (a JSON object) to every matching subscription.

        All deliveries go to the broker in one round trip; on Redis every subscriber gets the
        event or none does. Inside a handler, the new event inherits the handled event's
        correlation id and names it as its cause (not its extensions). With no subscriber, no
        delivery is sent and that is logged; ``require_subscribers=True`` raises
        :class:`NoSubscribersError` instead.

        ``extensions`` are CloudEvents extension attributes (``{"traceparent": "00-..."}``:
        lowercase alphanumeric names, string, integer or boolean values) and ``subject`` and
        ``dataschema`` the optional CloudEvents attributes; every handler sees them as
        ``event.extensions``, ``event.subject`` and ``event.dataschema``.

        For a declared name (:meth:`declare`), ``data`` may also be an instance of its
        pydantic model; ``version`` picks one of its declared versions (default: the
        highest), whose schema the data must meet (:class:`SchemaError`) and whose
        ``dataschema`` the event carries; only subscriptions accepting that version get it.
        With ``require_declarations``, an undeclared name raises :class:`EventNotDeclared`.

        Raises :class:`InvalidEventName`, :class:`InvalidEventData` (data that is not a JSON
        object, nests deeper than ``max_event_depth``, has a key that is not a string or a
        value JSON cannot hold) or :class:`EventTooLarge` for bad data,
        :class:`InvalidEnvelope` for a ``correlation_id`` or ``causation_id`` that is not a
        string or extensions, a subject or a dataschema that break the CloudEvents rules, and :class:`PublishError` when the broker refuses the event or does not take
        it within ``publish_timeout``. In all these cases nothing was sent, except for a
        :class:`PublishError` whose message says that Redis was reached but its reply lost:
        the deliveries may then have been queued, and publishing the same event again
        (:meth:`publish_event`) is the safe retry.

        >>> result = bus.publish("user.registered", {"user_id": 7})
        >>> [d.handler for d in result.deliveries]
        ['orders.welcome_order']
        """
        publisher = self._publisher
        event, data_json = publisher.make_event(
            name, data, correlation_id, causation_id, extensions, subject, dataschema, version
        )
        return publisher.publish(event, data_json, require_subscribers)

    def new_event(
        self,
        name: str,
        data: dict[str, Any] | None = None,
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        extensions: Mapping[str, ExtensionValue] | None = None,
        subject: str | None = None,
        dataschema: str | None = None,
        version: int | None = None,
    ) -> Event:
        """Validate ``name`` and ``data`` and make the event :meth:`publish` would send.

        Inside a handler the event inherits the handled event's correlation id and names it as
        its cause. Raises what :meth:`publish` raises for bad input; sends nothing.

        >>> event = bus.new_event("user.registered", {"user_id": 7})
        >>> bus.publish_event(event).event.id == event.id
        True
        """
        return self._publisher.make_event(
            name, data, correlation_id, causation_id, extensions, subject, dataschema, version
        )[0]

    def publish_event(
        self, event: Event, *, require_subscribers: bool | None = None
    ) -> PublishResult:
        """Send an already made ``event`` as it is: its id, time, correlation and cause are kept.

        This is how an outbox relay re-sends a stored event, so that a resend carries the same
        id and subscribers' inboxes skip it. Same errors and guarantees as :meth:`publish`, and
        :class:`InvalidEnvelope` when the event's attributes could not be sent (see
        :meth:`Event.validate`).
        """
        publisher = self._publisher
        event, data_json = publisher.checked(event)
        return publisher.publish(event, data_json, require_subscribers)

    def publish_many(
        self,
        events: Iterable[Event | tuple[str, Mapping[str, Any] | None] | Mapping[str, Any]],
        *,
        require_subscribers: bool | None = None,
    ) -> list[PublishResult]:
        """Publish many events in one round trip to the broker; one result per event, in order.

        Each item is a ``(name, data)`` pair, a mapping of :meth:`publish`'s arguments
        (``{"name": "order.placed", "data": {...}, "subject": "7"}``), or an :class:`Event`
        sent as it is (as :meth:`publish_event` sends it, so an outbox relay keeps its id).
        Every item is validated as :meth:`publish` validates it, and goes through the same
        scopes and middleware, before anything is sent: one that is refused raises what
        :meth:`publish` raises, its message naming the item's index, and nothing is sent.
        ``require_subscribers`` applies to every item as :meth:`publish` applies it.

        Where the backend has ``atomic_batches`` (``bus.backend.capabilities``) every
        delivery of every event is queued or none is. Elsewhere (RabbitMQ) the events are
        sent in order, and a failure part way raises :class:`PartialPublishError`: its
        ``sent`` first events are sent (``results`` holds theirs) and stay sent; publish
        ``events[error.sent:]`` again. An empty list sends nothing and returns ``[]``.

        Middleware sees each event as in :meth:`publish`; a scope that wraps ``call_next``
        (a tracing span) covers the event's preparation, as the send itself is shared by the
        whole call; ``on_published`` listeners hear of each event once it is sent. An event a
        middleware defers (Django's publish-on-commit, the outbox) is deferred as with
        :meth:`publish`, and its result has ``deferred=True``.

        >>> results = bus.publish_many([
        ...     ("user.registered", {"user_id": 1}),
        ...     {"name": "user.registered", "data": {"user_id": 2}, "subject": "2"},
        ... ])
        >>> [len(r.deliveries) for r in results]
        [1, 1]
        """
        publisher = self._publisher
        items = publisher.make_many(events)
        if not items:
            return []
        return publisher.finish_many(publisher.prepare_many(items, require_subscribers))

    @property
    def middleware(self) -> MiddlewareChain:
        """This bus's middleware chain, in order (the first is the outermost)."""
        return self._publisher.chain

    def _send_messages(self, messages: list[TaskMessage], name: str | None) -> None:
        # The publish path's transport step: every delivery of one event in one round trip.
        if name is None:
            self.transport.send(messages, None)
            return
        self.transport.send(messages, self._catalog_entry(name))
        self._published_names.add(name)

    def _note_sent(self, name: str) -> None:
        self._published_names.add(name)

    def _catalog_entry(self, name: str) -> tuple[str, str] | None:
        # The catalog learns who publishes what from the first publish of each name in each
        # process, written in the same round trip as the deliveries where the transport can.
        if name in self._published_names or not self.transport.records_catalog:
            return None
        return (f"{self.service} {name}", str(time.time()))

    def _published_alone(self, name: str) -> None:
        if name in self._published_names:
            return
        try:
            self.registry.record_published(self.service, name)
        except Exception as exc:  # the catalog is a convenience; never fail a publish for it
            log.debug("celery-events: could not record %r in the catalog: %s", name, exc)
        else:
            self._published_names.add(name)

    # -- publishing from asyncio -------------------------------------------------------------

    async def apublish(
        self,
        name: str,
        data: dict[str, Any] | None = None,
        *,
        require_subscribers: bool | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        extensions: Mapping[str, ExtensionValue] | None = None,
        subject: str | None = None,
        dataschema: str | None = None,
        version: int | None = None,
    ) -> PublishResult:
        """:meth:`publish` for asyncio code (FastAPI, aiohttp, any coroutine): the same
        arguments, validation, middleware, result, errors (raised from the ``await``) and
        guarantees, without blocking the event loop.

        On Redis the deliveries go out through a ``redis.asyncio`` client of the running
        loop (one per loop, made from the broker URL and options of the blocking client, and
        closed by :meth:`aclose` or :meth:`close`); other brokers' drivers have no asyncio
        API, so their blocking send runs in a worker thread. Validation, middleware and
        matching run on the loop (microseconds), or in a worker thread when they would wait
        on I/O: a registry view due for reloading, or a middleware that declares
        ``publishes_with_io`` (trace records, Django's transactions). A coroutine is never
        inside a Django transaction, so publish-on-commit sends at once and the outbox writes
        its row in its own transaction; to tie an event to a transaction, call
        :meth:`publish` in the synchronous function that runs it. A caller cancelled during
        the send may or may not have sent the event (on Redis: to every subscriber or none).

        >>> result = await bus.apublish("user.registered", {"user_id": 7})
        >>> [d.handler for d in result.deliveries]
        ['orders.welcome_order']
        """
        publisher = self._publisher

        def make() -> list[tuple[Event, str]]:
            made = publisher.make_event(
                name, data, correlation_id, causation_id, extensions, subject, dataschema, version
            )
            return [made]

        results = await _apublish.apublish(self, make, require_subscribers, name_index=False)
        return results[0]

    async def apublish_many(
        self,
        events: Iterable[Event | tuple[str, Mapping[str, Any] | None] | Mapping[str, Any]],
        *,
        require_subscribers: bool | None = None,
    ) -> list[PublishResult]:
        """:meth:`publish_many` for asyncio code: the same items (``(name, data)`` pairs,
        mappings of :meth:`publish`'s arguments, or :class:`Event` objects sent as they
        are), validation, errors and all-or-nothing promise, sent without blocking the event
        loop as :meth:`apublish` sends.

        >>> results = await bus.apublish_many([
        ...     ("user.registered", {"user_id": 1}), ("user.registered", {"user_id": 2}),
        ... ])
        >>> [len(r.deliveries) for r in results]
        [1, 1]
        """
        publisher = self._publisher
        return await _apublish.apublish(
            self, lambda: publisher.make_many(events), require_subscribers, name_index=True
        )

    async def aclose(self) -> None:
        """Close the running event loop's connections (those :meth:`apublish` opened on it),
        then everything :meth:`close` closes. Call it from the loop the bus published on,
        when it stops (a FastAPI lifespan's end)."""
        if self._backend is not None:
            await self._backend.transport.aclose()
        self.close()

    # -- the backend ------------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        """The backend chosen by the app's broker URL (made on first use): its ``name``,
        ``capabilities`` and roles (``transport``, ``recovery``, ``state``, ``registry``).

        Raises :class:`ConfigurationError` for a broker URL no backend serves, a backend that
        needs ``registry_url``, or one lacking a capability of the ``require`` setting.

        >>> bus.backend.name, bus.backend.capabilities.atomic_fanout
        ('redis', True)
        """
        backend = self._backend
        if backend is None:
            with self._lock:
                backend = self._backend
                if backend is None:
                    self._check_required(backend_name(broker_url_of(self.app)))
                    backend = self._backend = open_backend(
                        self.app, self.settings, state=self._state
                    )
        return backend

    def _check_required(self, name: str) -> None:
        if self.settings.require:
            capabilities = capabilities_of(name, own_state=self._state is None)
            check_required(name, capabilities, self.settings.require)

    @property
    def transport(self) -> Transport:
        """The backend's transport: how deliveries reach the broker."""
        transport = self._transport
        if transport is None:
            transport = self._transport = self.backend.transport
        return transport

    @property
    def registry(self) -> Registry:
        """The shared subscription registry, on the backend's registry store."""
        if self._registry is None:
            store = self.backend.registry
            with self._lock:
                if self._registry is None:
                    settings = self.settings
                    # Records are signed with this service's key and, when it requires
                    # signatures, only validly signed ones are believed (see registry.py).
                    self._registry = Registry(
                        store,
                        refresh_interval=settings.registry_refresh_interval,
                        max_staleness=settings.registry_max_staleness,
                        keyring=self._trust.keyring,
                        require_signatures=self._trust.require_signatures,
                    )
        return self._registry

    @property
    def inbox(self) -> Inbox:
        """This service's inbox and delivery bookkeeping, in the backend's state store (see
        :class:`~celery_events.backends.base.Inbox`)."""
        if self._inbox is None:
            state = self.backend.state
            with self._lock:
                if self._inbox is None:
                    self._inbox = state.inbox(self.service)
        return self._inbox

    @property
    def dead_letters(self) -> DeadLetterStore:
        """This service's dead letters: ``list``, ``get``, ``replay``, ``purge``, ``count``."""
        if self._dead_letters is None:
            state = self.backend.state
            with self._lock:
                if self._dead_letters is None:
                    self._dead_letters = DeadLetterStore(
                        state.dead_letters(self.service),
                        self.service,
                        limit=self.settings.dead_letter_limit,
                        resend=self._resend,
                        route=self._replay_queue,
                        # A dead letter the trust middleware would refuse (a signed event too
                        # old) is refused before any of a batch is sent.
                        check=self._trust.replay_check,
                    )
        return self._dead_letters

    def redis_effects(self) -> Any:
        """A Redis pipeline whose commands run only if the current handler succeeds, in one
        transaction with its inbox record: exactly-once effects for Redis writes.

        Raises :class:`ConfigurationError` when the backend's state store is not Redis (the
        ``transactional_effects`` capability), and :class:`CeleryEventsError` outside a
        running handler.

        >>> @bus.subscribe("order.created")
        ... def count(event: Event) -> None:
        ...     bus.redis_effects().incr("orders:created")
        """
        backend = self.backend
        if not backend.capabilities.transactional_effects:
            where = (
                f"the {backend.name} backend"
                if self._state is None
                else "the state store given as EventBus(state=...)"
            )
            raise ConfigurationError(
                f"bus.redis_effects() needs a Redis state store, and {where} has none (its"
                " capabilities lack transactional_effects). Use a redis:// broker (or"
                " registry_url with RabbitMQ) and its own state store, or write the effects in"
                " the handler itself."
            )
        effects = current_effects.get()
        if effects is None:
            raise CeleryEventsError(
                "bus.redis_effects() is only available inside a running handler."
            )
        return effects

    def _replay_queue(self, handler: str) -> str:
        """The queue a replay to ``handler`` goes to: that handler's own, if this service
        subscribes it.

        What the service subscribes is this bus's handlers, or, for a bus that declares none
        (an operator's shell), the service's subscriptions in the registry.
        """
        if self._handlers:
            subscribed = {
                name: self._delivery_queue(h, None) for name, h in self._handlers.items()
            }
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
        self,
        envelope: dict[str, Any],
        handler: str,
        queue: str,
        service: str | None = None,
        *,
        publish_scope: bool = True,
    ) -> str:
        """Send ``envelope`` again as a fresh delivery to a handler of ``service`` (default:
        this service; the operator CLI replays other services' dead letters).

        For this service the handler must be one of its own and its own queue is used, whatever
        ``queue`` says; for another, ``queue`` must come from that service's subscriptions.
        ``publish_scope=False`` (the testing kit's deliveries, events as they arrive) skips
        the chain's publish scopes. Raises :class:`ReplayError` for an envelope that is not a
        valid event.
        """
        if service is None or service == self.service:
            queue = self._replay_queue(handler)
        try:
            result = self._publisher.replay(
                envelope, handler, queue, service or self.service, publish_scope=publish_scope
            )
        except (InvalidEnvelope, InvalidEventData) as exc:
            raise ReplayError(f"The envelope cannot be replayed: {exc}") from exc
        if not result.deliveries:
            raise ReplayError(
                f"A middleware deferred the replay of event {result.event.id} to {handler!r};"
                " a replay is sent at once or refused, so the dead letter is kept."
            )
        return result.deliveries[0].task_id

    def close(self) -> None:
        """Stop the registry's background check and close the backend's connections (those
        of :meth:`apublish` too: closed on their own loops where those still run)."""
        if self._registry is not None:
            self._registry.close()
        if self._backend is not None:
            self._backend.close()


def _exception_types(option: str, value: object) -> tuple[type[BaseException], ...]:
    types = value if isinstance(value, tuple) else (value,)
    for item in types:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise ConfigurationError(
                f"{option} must be an exception class or a tuple of them, not {value!r}."
            )
    return types


def _versions(value: Iterable[int] | None, where: str) -> tuple[int, ...]:
    """``value`` as sorted, distinct versions (whole numbers from 1); ``None``: every one."""
    if value is None:
        return ()
    items = [value] if isinstance(value, int) else list(value)
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or item < 1:
            raise ConfigurationError(
                f"{where}: a version is a whole number from 1, not {item!r}."
            )
    if not items:
        raise ConfigurationError(f"{where}: versions=[] accepts nothing; omit it to accept every version.")
    return tuple(sorted(set(items)))


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


def bus_for(app: Celery) -> EventBus:
    """Return the event bus created for ``app``, or raise :class:`ConfigurationError`."""
    bus = _buses.for_app(app)
    if not isinstance(bus, EventBus):
        raise ConfigurationError(
            f"The Celery app {app.main!r} has no event bus; create one with"
            " EventBus(app, service='...')."
        )
    return bus
