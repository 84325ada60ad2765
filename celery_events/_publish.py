"""The one publish path: event -> validate -> middleware -> match -> transport.

``bus.publish``, ``bus.publish_event``, Django's outbox relay (through ``publish_event``),
dead-letter replay and the testing kit's capture all come through here, so an event's name,
data and ids are validated in one place and every event meets the same middleware.

The registry is matched after the middleware, when the event is sent: a middleware that
refuses costs no registry read, and one that defers (publish-on-commit) sends to whoever
subscribes when it is sent. ``require_subscribers`` is checked there too, and a deferring
middleware checks it before it defers (:meth:`PublishCall.check_subscribers`).

With no publish middleware the path calls the send directly: an empty chain adds nothing.

``bus.publish_many`` (and the asyncio ``apublish_many``) take the same path in two halves:
:meth:`Publisher.prepare_many` runs each event through the scopes and the chain (CPU only: the
chain's innermost step collects the event's deliveries instead of sending them, while the
batch is being prepared), then the caller hands :attr:`PreparedBatch.outgoing` to
``transport.send_many`` (or ``await transport.asend_many``) and :meth:`Publisher.sent` tells
the ``on_published`` listeners and the catalog. :meth:`Publisher.finish_many` is the blocking
send and that after-send half together. A middleware that defers its ``call_next`` (publish on
commit) sends normally when its hook runs later: collecting is on only while the batch is
prepared, in the preparing context.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

from celery import Celery

from ._delivery import current_event
from ._messages import TaskMessage, build_messages, encode_body
from .backends.base import Transport
from .contracts.middleware import versions_text
from .declarations import Declaration, version_in
from .envelope import Event, ExtensionValue, check_ids, encode_data
from .errors import (
    CeleryEventsError,
    EventNotDeclared,
    InvalidEnvelope,
    NoSubscribersError,
    PartialPublishError,
    PublishError,
    RegistryError,
    describe,
)
from .middleware.base import PUBLISH, REPLAY, Middleware, PublishCall
from .middleware.chain import MiddlewareChain
from .names import validate_name
from .registry import Subscription
from .results import Delivery, PublishResult
from .settings import Settings
from .trust.fields import SENSITIVE

if TYPE_CHECKING:
    from .backends.base import Outgoing

__all__ = ["Prepared", "PreparedBatch", "Publisher"]

log = logging.getLogger(__name__)

#: The batch being prepared in this context (``Publisher.prepare_many``): the chain's innermost
#: step collects into it instead of sending. ``None`` (sending) everywhere else, so a publish a
#: middleware deferred to a later hook (a commit) sends when the hook runs.
_collecting: ContextVar[PreparedBatch | None] = ContextVar("celery_events_collecting", default=None)

#: The keys an item of ``publish_many`` given as a mapping may have: ``publish``'s arguments.
ITEM_KEYS = frozenset(
    (
        "name",
        "data",
        "correlation_id",
        "causation_id",
        "extensions",
        "subject",
        "dataschema",
        "version",
    )
)


@dataclasses.dataclass
class Prepared:
    """One event of a batch, once through the scopes and the chain."""

    event: Event
    #: What the chain returned: final when the chain did not reach the send (a deferred or
    #: captured publish); otherwise the result as it will be, built again once sent (a
    #: transport that assigns task ids gives them when it sends).
    result: PublishResult
    #: The subscriptions that get the event, when the chain reached the send (else ``None``);
    #: empty when nobody subscribes (nothing to send; the catalog still hears of it).
    subscriptions: Sequence[Subscription] | None = None
    #: Their messages, in the same order.
    messages: list[TaskMessage] = dataclasses.field(default_factory=list)

    @property
    def collected(self) -> bool:
        return self.subscriptions is not None


@dataclasses.dataclass
class PreparedBatch:
    """A prepared ``publish_many``: what to send, and what to tell once it is sent."""

    publisher: Publisher
    #: One per event of the call, in order.
    events: list[Prepared] = dataclasses.field(default_factory=list)
    #: What ``transport.send_many`` takes: one ``(messages, catalog)`` per event with
    #: deliveries, in order.
    outgoing: list[Outgoing] = dataclasses.field(default_factory=list)
    #: The index in :attr:`events` of each entry of :attr:`outgoing`.
    positions: list[int] = dataclasses.field(default_factory=list)
    # What the innermost step collected for the event being prepared.
    _pending: Prepared | None = None

    def collect(
        self, event: Event, subscriptions: Sequence[Subscription], messages: list[TaskMessage]
    ) -> PublishResult:
        """The innermost step of the chain while the batch is prepared: keep the event's
        deliveries to send later, and return the result they will make."""
        result = _result(event, subscriptions, messages)
        self._pending = Prepared(event, result, subscriptions, messages)
        return result


def _result(
    event: Event, subscriptions: Sequence[Subscription], messages: Sequence[TaskMessage]
) -> PublishResult:
    return PublishResult(
        event,
        tuple(
            Delivery(s.service, s.handler, s.queue, m.task_id)
            for s, m in zip(subscriptions, messages, strict=True)
        ),
    )


def _at(index: int, exc: CeleryEventsError) -> CeleryEventsError:
    """``exc`` (of its own class, so callers catch it as from ``publish``) naming the event of
    the ``publish_many`` it is about."""
    exc.args = (f"Event {index} of the publish_many: {exc}", *exc.args[1:])
    return exc


class _Registry(Protocol):
    def match(self, name: str) -> list[Subscription]: ...


class ScopeGuard(Protocol):
    """What the publish path asks of the service's scopes (celery_events.trust.scopes)."""

    def check_publish(self, event: Event) -> None:
        """Raise :class:`~celery_events.PublishNotAllowed` if ``event`` may not be sent."""

    def allowed(self, subscriptions: list[Subscription]) -> list[Subscription]:
        """The subscriptions of ``subscriptions`` the scopes let receive deliveries."""


class PublishHost(Protocol):
    """What the publish path needs from its bus (the bus is the composition root)."""

    service: str
    settings: Settings
    app: Celery

    @property
    def registry(self) -> _Registry: ...

    @property
    def transport(self) -> Transport: ...

    def _send_messages(self, messages: list[TaskMessage], name: str | None) -> None:
        """Hand ``messages`` to the transport: all of them, or raise having sent none where
        the backend can promise it. ``name`` is the published event's (``None``: a replay)."""

    def _catalog_entry(self, name: str) -> tuple[str, str] | None:
        """The catalog's ``(field, value)`` for a send of ``name`` that the transport records
        with the deliveries, or ``None`` (known already, or the transport records none)."""

    def _note_sent(self, name: str) -> None:
        """Note that ``name`` was sent from this process (the catalog knows it)."""

    def _published_alone(self, name: str) -> None:
        """Note that ``name`` was published with no subscriber (the catalog)."""


class Publisher:
    """The publish path of one bus, with its middleware chain built once."""

    def __init__(
        self,
        host: PublishHost,
        middleware: Iterable[Middleware] = (),
        scopes: ScopeGuard | None = None,
    ) -> None:
        self.host = host
        self.settings = host.settings
        self.chain = MiddlewareChain(middleware, self._send_call)
        #: This service's publish and subscribe scopes (``None``: none, at no cost).
        self.scopes = scopes
        #: The sensitive paths of the names this service declared, comma-separated, by name
        #: (``bus.declare``): each event of such a name carries them as its ``sensitive``
        #: extension attribute. Empty (and never looked at) when nothing is sensitive.
        self.sensitive: dict[str, str] = {}
        #: This service's declarations (``bus.declare``), by name, then version (``None``:
        #: one without a schema). Empty (and never looked at) while nothing is declared.
        self.declared: dict[str, dict[int | None, Declaration]] = {}
        # (name, version, handler) of the subscriptions already logged as skipped for the
        # versions they accept.
        self._skipped: set[tuple[str, int, str]] = set()

    # -- making and validating events ---------------------------------------------------

    def encode(self, event: Event) -> str:
        """The event's data as JSON, or :class:`InvalidEventData` / :class:`EventTooLarge`."""
        settings = self.settings
        return encode_data(event.name, event.data, settings.max_event_size, settings.max_event_depth)

    def make_event(
        self,
        name: str,
        data: Mapping[str, Any] | None,
        correlation_id: str | None,
        causation_id: str | None,
        extensions: Mapping[str, ExtensionValue] | None = None,
        subject: str | None = None,
        dataschema: str | None = None,
        version: int | None = None,
    ) -> tuple[Event, str]:
        """A new event from this service, validated, and its data's JSON.

        For a declared name, ``version`` picks the declaration (default: the highest
        version) whose ``dataschema`` the event carries.
        """
        validate_name(name)
        if self.declared or version is not None or self.settings.require_declarations:
            declaration = self.declaration(name, version)
            if declaration is not None and declaration.dataschema is not None:
                if dataschema is not None and dataschema != declaration.dataschema:
                    raise InvalidEnvelope(
                        f"{name!r} is declared with dataschema {declaration.dataschema!r}; an"
                        f" event of it cannot carry {dataschema!r}. Leave dataschema out."
                    )
                dataschema = declaration.dataschema
            model = None if declaration is None or declaration.schema is None else (
                declaration.schema.model
            )
            if model is not None and isinstance(data, model):
                # The declaration's own model: its JSON form is the data (validated against
                # the schema's document by the Contracts middleware like any other data).
                instance: Any = data
                data = instance.model_dump(mode="json")
        # Before a handled event's ids fill in missing ones: 0 or False must be refused, not
        # replaced, and a non-string id would make every subscriber dead-letter the event.
        check_ids(correlation_id=correlation_id, causation_id=causation_id)
        data = {} if data is None else data
        settings = self.settings
        data_json = encode_data(name, data, settings.max_event_size, settings.max_event_depth)
        cause = current_event.get()
        if cause is not None:
            correlation_id = correlation_id or cause.correlation_id
            causation_id = causation_id or cause.id
        if self.sensitive:
            extensions = self._sensitive_extensions(name, extensions)
        event = Event.create(
            name,
            data,  # type: ignore[arg-type]
            source=self.host.service,
            correlation_id=correlation_id,
            causation_id=causation_id,
            # Not inherited from a handled event: a trace context, a signature or a schema
            # belongs to one event, and middleware makes the new event's own.
            extensions=extensions,
            subject=subject,
            dataschema=dataschema,
        )
        return event, data_json

    def declaration(self, name: str, version: int | None) -> Declaration | None:
        """This service's declaration of ``name`` at ``version`` (``None``: the highest
        declared); ``None`` for an undeclared name this service may publish.

        Raises :class:`EventNotDeclared` for a version it did not declare, or for an undeclared
        name when the ``require_declarations`` setting is on.
        """
        versions = self.declared.get(name)
        if not versions:
            if self.settings.require_declarations:
                raise EventNotDeclared(
                    f"{name!r} is not declared by service {self.host.service!r}, and it publishes"
                    " only declared events (require_declarations). Declare it:"
                    f" bus.declare({name!r}, schema=...)."
                )
            if version is not None:
                raise EventNotDeclared(
                    f"{name!r} version {version} is not declared by service"
                    f" {self.host.service!r}; declare it first: bus.declare({name!r},"
                    f" schema=..., version={version})."
                )
            return None
        if version is None:
            return versions[max(versions, key=lambda v: v or 0)]
        found = versions.get(version)
        if found is None:
            known = ", ".join(str(v) for v in sorted(v for v in versions if v is not None))
            raise EventNotDeclared(
                f"{name!r} version {version} is not declared by service {self.host.service!r}"
                f" (it declares {'version ' + known if known else 'no version'}); declare it"
                f" first: bus.declare({name!r}, schema=..., version={version})."
            )
        return found

    def checked(self, event: object) -> tuple[Event, str]:
        """``event`` if it is an :class:`Event` that can be sent as it is, and its data's JSON."""
        if not isinstance(event, Event):
            raise InvalidEnvelope(
                f"publish_event takes an Event (from bus.new_event or Event.create), not"
                f" {type(event).__name__}. Use bus.publish(name, data) to publish data."
            )
        event.validate()
        if self.declared or self.settings.require_declarations:
            event = self._declared(event)
        if self.sensitive and event.name in self.sensitive:
            declared = self._sensitive_extensions(event.name, event.extensions)
            if declared is not event.extensions:
                event = event.with_extensions(declared)
        return event, self.encode(event)

    def _declared(self, event: Event) -> Event:
        """``event`` carrying the ``dataschema`` of the declaration it is sent under: the one
        it names, or the name's highest version for an event that names none. Raises
        :class:`EventNotDeclared` for an undeclared name (with ``require_declarations``) or a
        ``dataschema`` naming no declared version."""
        name, dataschema = event.name, event.dataschema
        if dataschema is None:
            declaration = self.declaration(name, None)
            if declaration is None or declaration.dataschema is None:
                return event
            return dataclasses.replace(event, dataschema=declaration.dataschema)
        versions = self.declared.get(name)
        if not versions:
            self.declaration(name, None)  # raises with require_declarations
            return event
        if None in versions or any(d.dataschema == dataschema for d in versions.values()):
            return event  # (declared without a version: any dataschema, as bus.publish allows)
        known = ", ".join(str(d.dataschema) for d in versions.values())
        raise EventNotDeclared(
            f"Event {event.id} of {name!r} carries dataschema {dataschema!r}, which names no"
            f" version service {self.host.service!r} declares ({known}); declare that version"
            f" (bus.declare({name!r}, schema=..., version=...)) or publish the event without"
            " a dataschema."
        )

    def version_of(self, event: Event) -> int | None:
        """The version ``event``'s ``dataschema`` names: a declaration's of this service, or
        the one a default URI spells (``None``: unversioned)."""
        dataschema = event.dataschema
        if dataschema is None:
            return None
        versions = self.declared.get(event.name)
        if versions:
            for declaration in versions.values():
                if declaration.dataschema == dataschema:
                    return declaration.version
        return version_in(event.name, dataschema)

    def _sensitive_extensions(
        self, name: str, extensions: Mapping[str, ExtensionValue] | None
    ) -> Mapping[str, ExtensionValue] | None:
        # The declared paths of ``name``, with any the event already names (a middleware's or
        # an earlier publish's), as its ``sensitive`` attribute.
        declared = self.sensitive.get(name)
        if declared is None:
            return extensions
        given = (extensions or {}).get(SENSITIVE)
        if given == declared:
            return extensions
        if isinstance(given, str) and given:
            paths = given.split(",")
            paths += [p for p in declared.split(",") if p not in paths]
            declared = ",".join(paths)
        return {**(extensions or {}), SENSITIVE: declared}

    # -- publishing ---------------------------------------------------------------------

    def publish(
        self, event: Event, data_json: str, require_subscribers: bool | None
    ) -> PublishResult:
        """Send a validated ``event`` through the chain to its subscribers."""
        required = (
            self.settings.require_subscribers
            if require_subscribers is None
            else bool(require_subscribers)
        )
        if self.scopes is not None:
            # Before any middleware: a publish the scopes refuse raises in the caller, never
            # later from a commit hook or an outbox relay (the Scopes middleware checks
            # again at send time what middleware may have changed).
            self.scopes.check_publish(event)
        if self.chain.publish_scope is None:
            return self._send(event, data_json, required, None)
        return self.chain.run_publish(
            PublishCall._made(
                event, required, PUBLISH, data_json, None, self._check_subscribers, self.encode
            )
        )

    # -- publishing many events -----------------------------------------------------------

    def make_many(self, items: Iterable[object]) -> list[tuple[Event, str]]:
        """Every item of a ``publish_many`` as a validated event and its data's JSON.

        An item is an :class:`Event` (sent as ``publish_event`` sends it), a ``(name, data)``
        pair, or a mapping of ``publish``'s arguments (``{"name": ..., "data": ...,
        "correlation_id": ...}``). One that is none of these, or that ``publish`` would refuse,
        raises what ``publish`` raises, naming its index; nothing is sent.
        """
        made = []
        for index, item in enumerate(items):
            try:
                made.append(self._make_item(item))
            except CeleryEventsError as exc:
                raise _at(index, exc) from None
        return made

    def _make_item(self, item: object) -> tuple[Event, str]:
        if isinstance(item, Event):
            return self.checked(item)
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            name, data = item
            return self.make_event(name, data, None, None)
        if isinstance(item, Mapping):
            unknown = sorted(str(k) for k in item if k not in ITEM_KEYS)
            if unknown or "name" not in item:
                problem = (
                    f"has {', '.join(map(repr, unknown))}, which publish does not take"
                    if unknown
                    else "has no 'name'"
                )
                raise InvalidEnvelope(
                    f"The mapping {problem}; a mapping item holds publish's arguments:"
                    f" {', '.join(sorted(ITEM_KEYS))} (name required)."
                )
            arguments = dict(item)
            return self.make_event(
                arguments["name"],
                arguments.get("data"),
                arguments.get("correlation_id"),
                arguments.get("causation_id"),
                arguments.get("extensions"),
                arguments.get("subject"),
                arguments.get("dataschema"),
                arguments.get("version"),
            )
        raise InvalidEnvelope(
            f"publish_many takes Events, (name, data) pairs or mappings of publish's"
            f" arguments, not {type(item).__name__}."
        )

    def prepare_many(
        self,
        items: Sequence[tuple[Event, str]],
        require_subscribers: bool | None,
        *,
        name_index: bool = True,
    ) -> PreparedBatch:
        """Run each validated event (from :meth:`make_many`) through the scopes and the
        chain, collecting its deliveries instead of sending them: no I/O but the registry's
        (matching). A refused event raises what ``publish`` raises (naming its index with
        ``name_index``), and nothing is sent; what a middleware deferred before it (a commit
        hook, an outbox row) stays deferred, as it would after a ``publish`` that raised.
        """
        batch = PreparedBatch(self)
        host = self.host
        catalogued: set[str] = set()
        token = _collecting.set(batch)
        try:
            for index, (event, data_json) in enumerate(items):
                batch._pending = None
                try:
                    result = self.publish(event, data_json, require_subscribers)
                except CeleryEventsError as exc:
                    if name_index:
                        raise _at(index, exc) from None
                    raise
                pending = batch._pending
                if pending is None:
                    # The chain did not reach the send: deferred, or captured.
                    batch.events.append(Prepared(event, result))
                    continue
                batch.events.append(pending)
                if pending.messages:
                    name = pending.event.name
                    catalog = None
                    if name not in catalogued:
                        catalogued.add(name)
                        catalog = host._catalog_entry(name)
                    batch.outgoing.append((pending.messages, catalog))
                    batch.positions.append(index)
        finally:
            _collecting.reset(token)
            batch._pending = None
        return batch

    def finish_many(self, batch: PreparedBatch) -> list[PublishResult]:
        """Send a prepared batch (``transport.send_many``, all or nothing where the backend
        has ``atomic_batches``), then :meth:`sent`; a failure is :meth:`send_failed`'s."""
        if batch.outgoing:
            try:
                self.host.transport.send_many(batch.outgoing)
            except PartialPublishError as exc:
                raise self.send_failed(batch, exc) from exc
        return self.sent(batch)

    def sent(self, batch: PreparedBatch, count: int | None = None) -> list[PublishResult]:
        """After the send: the results of the first ``count`` events (all by default), each
        told to the ``on_published`` listeners, and the catalog told of their names."""
        host = self.host
        results = []
        for prepared in batch.events[:count]:
            subscriptions = prepared.subscriptions
            if subscriptions is None:
                results.append(prepared.result)
                continue
            name = prepared.event.name
            if not prepared.messages:
                host._published_alone(name)
                result = prepared.result
            else:
                host._note_sent(name)
                result = _result(prepared.event, subscriptions, prepared.messages)
            results.append(self._published(result, None))
        return results

    def send_failed(self, batch: PreparedBatch, exc: PartialPublishError) -> PartialPublishError:
        """The error of a send that stopped part way (a backend without ``atomic_batches``):
        how many events of the call are sent, counted in its events (those with nothing to
        send or deferred included), and their results, told as :meth:`sent` tells them."""
        if exc.sent < len(batch.positions):
            done = batch.positions[exc.sent]
        else:
            done = len(batch.events)
        results = self.sent(batch, done)
        reason = describe(exc.__cause__) + "." if exc.__cause__ is not None else str(exc)
        return PartialPublishError(
            f"{reason} The first {done} of the {len(batch.events)} events of this publish_many"
            f" were sent before it failed, and stay sent; publish the others again"
            f" (events[{done}:]).",
            sent=done,
            results=results,
        )

    def replay(
        self,
        envelope: dict[str, Any],
        handler: str,
        queue: str,
        service: str,
        *,
        publish_scope: bool = True,
    ) -> PublishResult:
        """Send ``envelope`` again as one fresh delivery to ``handler`` on ``queue``.

        ``publish_scope=False`` sends it past the chain's publish scopes: the testing kit's
        deliveries stand for events another service published, which this service's publish
        middleware (stamping, permissions, publish-on-commit) never sees on a real worker.
        Raises :class:`InvalidEnvelope` or :class:`InvalidEventData` for an envelope that is
        not a valid event (the caller turns them into a ``ReplayError``).
        """
        event = Event.from_envelope(envelope)
        data_json = self.encode(event)
        targets = (Subscription("", service, handler, queue),)
        if not publish_scope or self.chain.publish_scope is None:
            return self._send(event, data_json, False, targets)
        return self.chain.run_publish(
            PublishCall(
                event, False, REPLAY, data_json, targets, _check=None, _encode=self.encode
            )
        )

    def _send_call(self, call: PublishCall) -> PublishResult:
        # The chain's innermost step.
        return self._send(call.event, call.data_json, call.require_subscribers, call.targets)

    def _check_subscribers(self, call: PublishCall) -> None:
        if not self._receivers(call.event):
            raise self._nobody(call.event.name)

    def _receivers(self, event: Event) -> list[Subscription]:
        """The subscriptions that get ``event``: those matching its name that accept its
        version. One matched but skipped for its versions is logged once per name, version
        and handler: never silently left out."""
        found = self._match(event.name)
        if event.dataschema is None or not any(s.versions for s in found):
            return found
        version = self.version_of(event)
        if version is None:
            return found
        receivers = []
        for subscription in found:
            if subscription.accepts_version(version):
                receivers.append(subscription)
                continue
            key = (event.name, version, subscription.handler)
            if key not in self._skipped:
                self._skipped.add(key)
                log.warning(
                    "celery-events: %s v%d not delivered to %s: it accepts %s only",
                    event.name,
                    version,
                    subscription.handler,
                    versions_text(event.name, subscription.versions),
                )
        return receivers

    def _match(self, name: str) -> list[Subscription]:
        try:
            found = self.host.registry.match(name)
        except RegistryError as exc:
            raise PublishError(f"Could not publish {name!r}: {exc}") from exc
        scopes = self.scopes
        return found if scopes is None or not found else scopes.allowed(found)

    @staticmethod
    def _nobody(name: str) -> NoSubscribersError:
        return NoSubscribersError(
            f"No service subscribes to {name!r}, so the event was not sent. Start a"
            " subscriber (or run its register command) first, or publish without"
            " require_subscribers."
        )

    def _send(
        self,
        event: Event,
        data_json: str,
        require_subscribers: bool,
        targets: Sequence[Subscription] | None,
    ) -> PublishResult:
        host = self.host
        name = event.name
        collecting = _collecting.get()
        if collecting is not None and (collecting.publisher is not self or targets is not None):
            collecting = None  # another bus's publish, or a replay: sent now
        subscriptions = self._receivers(event) if targets is None else targets
        if not subscriptions:
            if require_subscribers:
                raise self._nobody(name)
            log.info("celery-events: no subscriber for %r (event %s); nothing sent", name, event.id)
            if collecting is not None:
                return collecting.collect(event, (), [])
            host._published_alone(name)
            return self._published(PublishResult(event), targets)
        app = host.app
        parent = app.current_worker_task
        parent_id = root_id = None
        # A replay is a fresh delivery, not a child of whatever task runs it.
        if parent is not None and targets is None:
            parent_id = parent.request.id
            root_id = parent.request.root_id or parent.request.id
        envelope = event.to_envelope()
        head = {k: v for k, v in envelope.items() if k != "data"}
        direct = targets is not None
        messages = build_messages(
            app,
            envelope,
            encode_body(head, data_json),
            # Shown in worker logs and Flower as ``event.name → handler``.
            [(s.handler, s.queue, f"{name} → {s.handler}", s.service) for s in subscriptions],
            parent_id=parent_id,
            root_id=root_id,
            # A replay goes to one handler as it is: its message keeps its own id.
            placeholder_ids=not direct and host.transport.assigns_task_ids,
        )
        for subscription, message in zip(subscriptions, messages, strict=True):
            message.subscription = subscription
            message.direct = direct
        if collecting is not None:
            return collecting.collect(event, subscriptions, messages)
        host._send_messages(messages, None if direct else name)
        return self._published(_result(event, subscriptions, messages), targets)

    def _published(
        self, result: PublishResult, targets: Sequence[Subscription] | None
    ) -> PublishResult:
        # Every middleware hears of each event really sent, wherever it sits on the chain: a
        # publish deferred to a commit is sent by the scopes inside the deferring one only.
        listeners = self.chain.on_published
        if listeners:
            self.chain.notify(listeners, result, PUBLISH if targets is None else REPLAY)
        return result

