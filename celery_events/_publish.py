"""The one publish path: event -> validate -> middleware -> match -> transport.

``bus.publish``, ``bus.publish_event``, Django's outbox relay (through ``publish_event``),
dead-letter replay and the testing kit's capture all come through here, so an event's name,
data and ids are validated in one place and every event meets the same middleware.

The registry is matched after the middleware, when the event is sent: a middleware that
refuses costs no registry read, and one that defers (publish-on-commit) sends to whoever
subscribes when it is sent. ``require_subscribers`` is checked there too, and a deferring
middleware checks it before it defers (:meth:`PublishCall.check_subscribers`).

With no publish middleware the path calls the send directly: an empty chain adds nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from celery import Celery

from ._delivery import current_event
from ._messages import TaskMessage, build_messages, encode_body
from .backends.base import Transport
from .contracts.middleware import versions_text
from .declarations import Declaration, version_in
from .envelope import Event, ExtensionValue, check_ids, encode_data
from .errors import (
    EventNotDeclared,
    InvalidEnvelope,
    NoSubscribersError,
    PublishError,
    RegistryError,
)
from .middleware.base import PUBLISH, REPLAY, Middleware, PublishCall
from .middleware.chain import MiddlewareChain
from .names import validate_name
from .registry import Subscription
from .results import Delivery, PublishResult
from .settings import Settings
from .trust.fields import SENSITIVE

__all__ = ["Publisher"]

log = logging.getLogger(__name__)


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
            PublishCall(
                event,
                required,
                PUBLISH,
                data_json,
                None,
                _check=self._check_subscribers,
                _encode=self.encode,
            )
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
        subscriptions = self._receivers(event) if targets is None else targets
        if not subscriptions:
            if require_subscribers:
                raise self._nobody(name)
            log.info("celery-events: no subscriber for %r (event %s); nothing sent", name, event.id)
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
        host._send_messages(messages, None if direct else name)
        return self._published(
            PublishResult(
                event,
                tuple(
                    Delivery(s.service, s.handler, s.queue, m.task_id)
                    for s, m in zip(subscriptions, messages, strict=True)
                ),
            ),
            targets,
        )

    def _published(
        self, result: PublishResult, targets: Sequence[Subscription] | None
    ) -> PublishResult:
        # Every middleware hears of each event really sent, wherever it sits on the chain: a
        # publish deferred to a commit is sent by the scopes inside the deferring one only.
        listeners = self.chain.on_published
        if listeners:
            self.chain.notify(listeners, result, PUBLISH if targets is None else REPLAY)
        return result

