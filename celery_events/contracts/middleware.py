"""Validation of event contracts, at publish and on receipt, as middleware.

The bus adds it itself, never the user, and only where there is something to check, so that a
bus without contracts keeps an empty chain:

- :class:`Contracts`, on a bus that declared a schema (``bus.declare(name, schema=...)``): the
  outermost publish scope, so that data breaking the schema of the version the event names
  (its ``dataschema``) raises :class:`~celery_events.SchemaError` in the caller, before any
  middleware defers the publish (Django's publish-on-commit and outbox) and with nothing sent.
  Replays of dead letters pass: a replay is a delivery sent again, judged on receipt by the
  handler's worker against the declaration and handler schema in force then, so that a dead
  letter kept under an old declaration can be replayed once the handler is fixed.
- :class:`ContractsOnReceipt` (which :class:`Contracts` extends), on every bus with handlers:
  a receive hook that dead-letters a delivery ``schema_mismatch`` before the inbox is asked
  and before the handler runs, when its event has a version the handler does not accept
  (``versions=``), its data breaks the declaration the registry holds for its ``dataschema``,
  or breaks the handler's own schema (``schema=``, or its pydantic parameter's). Receive hooks
  run innermost first, so signatures are verified and fields decrypted before it looks.

Schemas are compiled once: the declarations' when declared, the registry's once per record
read, the handlers' when subscribed. A delivery with nothing to check costs a dict lookup.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from ..deadletters import Reason
from ..declarations import Declaration, version_in
from ..envelope import Event
from ..errors import DeliveryRefused, SchemaError
from ..middleware.base import PUBLISH, Middleware, PublishCall, PublishNext, Receipt
from ..results import PublishResult
from .schemas import Schema, compiled

if TYPE_CHECKING:
    from ..registry import RegisteredDeclaration

__all__ = ["Contracts", "ContractsOnReceipt", "VersionNotAccepted", "versions_text"]


class VersionNotAccepted(DeliveryRefused):
    """A delivery of a version its handler does not accept (``versions=``): dead-lettered
    ``schema_mismatch``, unless the broker copied it to the handler's queue by name alone
    (RabbitMQ's topic routing), when it is acked unrun: its publisher sent it to the
    handlers accepting its version and reported only those."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason=Reason.SCHEMA_MISMATCH)


class Handler(Protocol):
    """What the contracts read of a handler (``celery_events.Handler``)."""

    @property
    def task_name(self) -> str: ...

    @property
    def versions(self) -> tuple[int, ...]: ...

    @property
    def accepts(self) -> Schema | None: ...


class _Registry(Protocol):
    def declared(self, name: str) -> tuple[RegisteredDeclaration, ...]: ...


class ContractsHost(Protocol):
    """What the contracts need from their bus (the bus passes itself)."""

    service: str

    @property
    def _handlers(self) -> Mapping[str, Handler]: ...

    @property
    def registry(self) -> _Registry: ...

    @property
    def declarations(self) -> list[Declaration]: ...


def versions_text(name: str, versions: tuple[int, ...]) -> str:
    """``"order.created v1 and v3"``: the versions a handler accepts, as messages show them."""
    shown = [f"v{v}" for v in versions]
    listed = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]}"
    return f"{name} {listed}"


class ContractsOnReceipt(Middleware):
    """The receive hook of the contracts: refuses deliveries their handler cannot take."""

    def __init__(self, host: ContractsHost) -> None:
        self.host = host
        # The handlers, by task name: the bus's own dict, so later subscriptions are seen.
        self._handlers = host._handlers
        # The registry's schemas, by (service, dataschema): compiled once per record read (a
        # new read makes new declaration objects, which are compiled again only if their
        # document changed: compiled() caches by fingerprint).
        self._registered: dict[tuple[str, str], tuple[RegisteredDeclaration, Schema | None]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def receive(self, receipt: Receipt) -> Receipt:
        handler = self._handlers.get(receipt.handler)
        if handler is None:
            return receipt
        event = receipt.event
        dataschema = event.dataschema
        if dataschema is not None:
            self._check_declared(handler, event, dataschema)
        if handler.accepts is not None:
            self._check(
                handler.accepts, event, f"{event.name} data (as {handler.task_name} accepts it)"
            )
        return receipt

    def _check_declared(self, handler: Handler, event: Event, dataschema: str) -> None:
        declaration, schema = self._registered_schema(event, dataschema)
        version = declaration.version if declaration is not None else None
        if version is None:
            version = version_in(event.name, dataschema)
        if handler.versions and version is not None and version not in handler.versions:
            raise VersionNotAccepted(
                f"Event {event.id} refused: {handler.task_name} accepts"
                f" {versions_text(event.name, handler.versions)} only, and the event is"
                f" v{version} ({dataschema})."
            )
        if schema is not None and declaration is not None:
            self._check(
                schema,
                event,
                f"{event.name} v{version} data (as {declaration.service} declares it)",
            )

    def _registered_schema(
        self, event: Event, dataschema: str
    ) -> tuple[RegisteredDeclaration | None, Schema | None]:
        """The registry's declaration of ``dataschema`` (the event source's own if it has one)
        and its compiled schema."""
        found: RegisteredDeclaration | None = None
        for declaration in self.host.registry.declared(event.name):
            if declaration.dataschema != dataschema:
                continue
            if declaration.service == event.source:
                found = declaration
                break
            found = found or declaration
        if found is None:
            return None, None
        key = (found.service, dataschema)
        cached = self._registered.get(key)
        if cached is None or cached[0] is not found:
            schema = None if found.schema is None else compiled(found.schema)
            cached = self._registered[key] = (found, schema)
        return cached

    @staticmethod
    def _check(schema: Schema, event: Event, what: str) -> None:
        try:
            schema.validate(event.data, what)
        except SchemaError as exc:
            raise DeliveryRefused(
                f"Event {event.id} refused: {exc}", reason=Reason.SCHEMA_MISMATCH
            ) from None


class Contracts(ContractsOnReceipt):
    """The contracts of a bus that declares schemas: validation at publish, and on receipt.

    Each published event of a declared name is validated against the schema of the
    declaration its ``dataschema`` names (set from ``version=`` by ``bus.publish``): data that
    breaks it raises :class:`~celery_events.SchemaError` naming the name, version, path and
    rule, and nothing is sent.

    >>> from celery import Celery
    >>> from pydantic import BaseModel
    >>> from celery_events import EventBus
    >>> class Item(BaseModel):
    ...     qty: int
    >>> class OrderCreated(BaseModel):
    ...     items: list[Item]
    >>> bus = EventBus(Celery("shop", broker="memory://"), service="shop")
    >>> bus.declare("order.created", schema=OrderCreated, version=2)
    Declaration(name='order.created', ...)
    >>> bus.publish("order.created", {"items": [{"qty": "x"}]})
    Traceback (most recent call last):
      ...
    celery_events.errors.SchemaError: order.created v2 data: "x" is not of type "integer" (at items[0].qty; rule type).
    """

    def __init__(self, host: ContractsHost) -> None:
        super().__init__(host)
        # By name, then dataschema: what ``message`` starts with, and the schema.
        self._published: dict[str, dict[str | None, tuple[str, Schema]]] = {}
        for declaration in host.declarations:
            self.add(declaration)

    def add(self, declaration: Declaration) -> None:
        """Validate published events of ``declaration`` from now on (``bus.declare``)."""
        dataschema = declaration.dataschema
        if declaration.schema is None or dataschema is None:
            return
        what = f"{declaration.name} v{declaration.version} data"
        by_schema = self._published.get(declaration.name, {})
        self._published[declaration.name] = {**by_schema, dataschema: (what, declaration.schema)}

    def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
        event = call.event
        found = self._published.get(event.name)
        if found is not None and call.origin == PUBLISH:
            # The publish path set (or checked) the dataschema of a declared name's event.
            checked = found.get(event.dataschema)
            if checked is not None:
                checked[1].validate(event.data, checked[0])
        return call_next(call)
