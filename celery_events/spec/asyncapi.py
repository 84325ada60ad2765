"""The whole fleet as one AsyncAPI 3.0.0 document, read from the registry.

:func:`asyncapi_document` turns what the registry holds (every service's declarations and
subscriptions, and the names publishers were seen publishing) into a document that AsyncAPI
tools read: no service's code is imported. It holds

- one **server**, the broker in use (its password never written);
- one **channel** per event name (declared or published), and one per subscribed pattern that
  matches no known name (its address is the pattern: ``*`` stands for one word, ``#`` for zero
  or more). On RabbitMQ each channel is a routing key of the events exchange;
- one **message** per declared version of a name (``order.created.v2``), whose payload is the
  CloudEvents 1.0 envelope (JSON, structured mode) with ``data`` the declared schema, and one
  for events without a version (a name nobody declared a schema for);
- a **send** operation per publishing service and name, and a **receive** operation per
  handler on every channel its pattern matches, listing only the versions it accepts.

Declared schemas live in ``components/schemas``; their local references (pydantic's
``#/$defs/...``) are rewritten to point inside the document, so it stays self-contained.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any
from urllib.parse import unquote, urlsplit

from ..backends import without_password
from ..catalog import Catalog, CatalogEntry, version_list
from ..contracts.schemas import fingerprint_of
from ..envelope import DATACONTENTTYPE, SPECVERSION
from ..errors import ConfigurationError
from ..registry import RegisteredDeclaration, Subscription

__all__ = [
    "ASYNCAPI_VERSION",
    "DEFAULT_TITLE",
    "Broker",
    "asyncapi_document",
    "channel_key",
    "to_json",
    "to_yaml",
]

ASYNCAPI_VERSION = "3.0.0"
DEFAULT_TITLE = "celery-events fleet"
#: The media type of a CloudEvent in structured mode, the whole envelope as JSON.
CLOUDEVENTS_JSON = "application/cloudevents+json"
AMQP_BINDING_VERSION = "0.3.0"

# Broker URL scheme -> AsyncAPI protocol, and the port a URL without one means (kombu's).
_PROTOCOLS = {
    "redis": "redis", "rediss": "redis", "unix": "redis", "redis+socket": "redis",
    "sentinel": "redis", "amqp": "amqp", "pyamqp": "amqp", "amqps": "amqps",
}
_PORTS = {
    "redis": 6379, "rediss": 6379, "sentinel": 26379, "amqp": 5672, "pyamqp": 5672,
    "amqps": 5671,
}
# In a schema, the values of these keywords are data, not schemas: their "$ref" is left as is.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples", "example"})
# And these map names (of properties, definitions) to schemas.
_NAMED_SCHEMAS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
_ANY_DATA: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class Broker:
    """The broker a fleet runs on, as the document's server describes it.

    >>> from celery_events.spec.asyncapi import Broker
    >>> Broker("amqp", "amqp://guest:secret@rabbit:5672//", exchange="celery_events").backend
    'amqp'
    """

    #: The backend's name (``bus.backend.name``): ``redis``, ``sentinel``, ``amqp``...
    backend: str
    #: The broker URL (a ``;``-separated list for Sentinel); its password is never written.
    url: str
    #: On RabbitMQ, the name of the events exchange (a durable topic exchange).
    exchange: str | None = None


def channel_key(name: str) -> str:
    """The key of the channel of an event name or pattern: AsyncAPI keys take letters,
    digits, ``.``, ``-`` and ``_``, so ``*`` is written ``_word_`` and ``#`` ``_words_`` (no
    word of a name starts with ``_``, so these never clash with one).

    >>> from celery_events.spec.asyncapi import channel_key
    >>> channel_key("order.#")
    'order._words_'
    """
    return name.replace("*", "_word_").replace("#", "_words_")


def asyncapi_document(
    declarations: Iterable[RegisteredDeclaration],
    subscriptions: Iterable[Subscription],
    *,
    backend: Broker,
    title: str | None = None,
    version: str | None = None,
    published: Iterable[tuple[str, str]] = (),
) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of a fleet (see the module docstring), a JSON-ready dict.

    ``published`` are the ``(service, event name)`` pairs publishers recorded
    (``registry.publishers()``); ``version`` defaults to the date of the newest registration
    (today when there is none).

    >>> from celery import Celery
    >>> from celery_events import EventBus
    >>> from celery_events.spec.asyncapi import Broker, asyncapi_document
    >>> bus = EventBus(Celery("orders", broker="redis://localhost:6379/0"), service="orders")
    >>> @bus.subscribe("user.registered")
    ... def welcome(event): ...
    >>> subscriptions = bus.register()
    >>> document = asyncapi_document(
    ...     bus.registry.declarations(), bus.registry.subscriptions(),
    ...     backend=Broker("redis", "redis://localhost:6379/0"),
    ...     published=bus.registry.publishers(),
    ... )
    >>> document["asyncapi"], sorted(document["channels"])
    ('3.0.0', ['user.registered'])
    """
    declarations = list(declarations)
    subscriptions = list(subscriptions)
    catalog = Catalog.build(subscriptions, published, declarations)
    builder = _Builder(backend)
    for entry in catalog.entries:
        builder.add(entry)
    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": title or DEFAULT_TITLE,
            "version": version or _default_version(declarations, subscriptions),
            "description": (
                "Every event of the services that share this registry: who publishes which"
                " name and version, and which handler receives it. Each message is a"
                " CloudEvents 1.0 envelope (JSON), carried as the first argument of a Celery task"
                " message, one per subscribing handler."
            ),
        },
        "defaultContentType": DATACONTENTTYPE,
        "servers": {backend.backend: _server(backend)},
        "channels": builder.channels,
        "operations": builder.operations,
        "components": {"messages": builder.messages},
    }
    if builder.schemas:
        document["components"]["schemas"] = builder.schemas
    return document


def to_json(document: dict[str, Any]) -> str:
    """The document as indented JSON text."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def to_yaml(document: dict[str, Any]) -> str:
    """The document as YAML text; raises :class:`ConfigurationError` without PyYAML."""
    try:
        import yaml
    except ImportError:
        raise ConfigurationError(
            "YAML output needs PyYAML: pip install 'celery-events[contracts]', or ask for"
            " --format json."
        ) from None
    text: str = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    return text


# -- servers ------------------------------------------------------------------------------


def _server(broker: Broker) -> dict[str, Any]:
    parts = urlsplit(broker.url.split(";")[0])
    scheme = parts.scheme
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    try:
        port = parts.port or _PORTS.get(scheme)
    except ValueError:  # a port that is not a number: the host alone
        port = None
    server: dict[str, Any] = {
        "host": f"{host}:{port}" if port else host,
        "protocol": _PROTOCOLS.get(scheme, scheme or broker.backend),
        "description": f"The {broker.backend} broker: {without_password(broker.url)}.",
    }
    if server["protocol"].startswith("amqp"):
        server["protocolVersion"] = "0.9.1"
        if _vhost(broker) != "/":
            server["pathname"] = f"/{_vhost(broker)}"
    elif parts.path not in ("", "/"):
        server["pathname"] = parts.path  # the Redis database, or a socket's path
    return server


def _vhost(broker: Broker) -> str:
    # kombu's reading: "amqp://host//" is the vhost "/", "amqp://host/shop" the vhost "shop".
    return unquote(urlsplit(broker.url.split(";")[0]).path[1:]) or "/"


# -- channels, messages, operations -------------------------------------------------------


@dataclass(frozen=True)
class _Message:
    key: str
    #: The declared version, or None for events without one.
    version: int | None
    #: The services whose events it describes.
    services: tuple[str, ...]


class _Builder:
    """Fills the channels, operations and components of one document, name by name."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.channels: dict[str, Any] = {}
        self.operations: dict[str, Any] = {}
        self.messages: dict[str, Any] = {}
        self.schemas: dict[str, Any] = {}

    def add(self, entry: CatalogEntry) -> None:
        key = channel_key(entry.name)
        messages = list(self._messages(entry))
        channel: dict[str, Any] = {
            "address": entry.name,
            "title": entry.name,
            "description": _channel_description(entry),
            "messages": {m.key: {"$ref": f"#/components/messages/{m.key}"} for m in messages},
        }
        if self.broker.exchange is not None:
            channel["bindings"] = {"amqp": self._exchange_binding()}
        self.channels[key] = channel
        for publisher in entry.publishers:
            self._send(key, entry, publisher, messages)
        for subscription in entry.subscriptions:
            self._receive(key, entry, subscription, messages)

    def _messages(self, entry: CatalogEntry) -> Iterator[_Message]:
        by_version: dict[int, list[RegisteredDeclaration]] = {}
        for declaration in entry.declarations:
            if declaration.version is not None:
                by_version.setdefault(declaration.version, []).append(declaration)
        for number, declared in sorted(by_version.items()):
            kinds = {(_fingerprint(d.schema), d.dataschema) for d in declared}
            # Services that declared one version with different schemas (or dataschema URIs)
            # get one message each, told apart by their source; else the version is one.
            groups = [declared] if len(kinds) == 1 else [[d] for d in declared]
            for group in groups:
                suffix = "" if len(groups) == 1 else f".{group[0].service}"
                key = f"{channel_key(entry.name)}.v{number}{suffix}"
                self._versioned_message(key, entry, group, split=len(groups) > 1)
                yield _Message(key, number, tuple(d.service for d in group))
        # Events without a version: those of publishers that declared none (or no schema),
        # and whatever a pattern nobody publishes would receive.
        plain = tuple(p for p in entry.publishers if not entry.versions_of(p))
        if plain or not entry.publishers:
            key = f"{channel_key(entry.name)}.unversioned"
            self._unversioned_message(key, entry, plain, exclusive=bool(by_version))
            yield _Message(key, None, plain)

    def _versioned_message(
        self, key: str, entry: CatalogEntry, group: list[RegisteredDeclaration], split: bool
    ) -> None:
        first = group[0]
        services = [d.service for d in group]
        if first.schema is None:
            data: dict[str, Any] = dict(_ANY_DATA)
        else:
            self.schemas[key] = _component_schema(first.schema, key)
            data = {"$ref": f"#/components/schemas/{key}"}
        payload = _envelope(
            {"const": entry.name, "description": "The event name."},
            data,
            dataschema=first.dataschema,
            source=first.service if split else None,
        )
        message: dict[str, Any] = {
            "name": key,
            "title": f"{entry.name} v{first.version}",
            "summary": f"Version {first.version} of {entry.name}, published by"
            f" {', '.join(services)}.",
            "contentType": CLOUDEVENTS_JSON,
            "payload": payload,
            "x-event": entry.name,
            "x-version": first.version,
            "x-publishers": services,
            "x-compatibility": first.compatibility,
        }
        if first.dataschema is not None:
            message["x-dataschema"] = first.dataschema
        if first.schema is not None:
            message["x-fingerprint"] = _fingerprint(first.schema)
        if first.sensitive:
            message["x-sensitive"] = list(first.sensitive)
        self.messages[key] = message

    def _unversioned_message(
        self, key: str, entry: CatalogEntry, services: tuple[str, ...], exclusive: bool
    ) -> None:
        is_pattern = "*" in entry.name or "#" in entry.name
        event_type = (
            {"type": "string", "description": f"An event name matching {entry.name}."}
            if is_pattern
            else {"const": entry.name, "description": "The event name."}
        )
        payload = _envelope(event_type, dict(_ANY_DATA), dataschema=None, source=None)
        if exclusive:
            # Beside declared versions, an event without a version is the one without a
            # dataschema: every message of a channel must be told apart from the others.
            payload["not"] = {"required": ["dataschema"]}
        who = f", published by {', '.join(services)}" if services else ""
        self.messages[key] = {
            "name": key,
            "title": f"{entry.name} (no declared version)",
            "summary": f"{entry.name} without a declared schema{who}: any JSON object.",
            "contentType": CLOUDEVENTS_JSON,
            "payload": payload,
            "x-event": entry.name,
            "x-publishers": list(services),
        }

    def _send(
        self, key: str, entry: CatalogEntry, publisher: str, messages: list[_Message]
    ) -> None:
        versions = entry.versions_of(publisher)
        mine = [m for m in messages if publisher in m.services]
        what = f" ({version_list(versions)})" if versions else ""
        self.operations[f"{publisher}.send.{key}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{key}"},
            "title": f"{publisher} publishes {entry.name}{what}",
            "messages": [{"$ref": f"#/channels/{key}/messages/{m.key}"} for m in mine],
            "tags": [{"name": publisher}],
            "x-service": publisher,
        }

    def _receive(
        self, key: str, entry: CatalogEntry, subscription: Subscription, messages: list[_Message]
    ) -> None:
        taken = [m for m in messages if subscription.accepts_version(m.version)]
        accepts = version_list(subscription.versions) if subscription.versions else "any version"
        operation: dict[str, Any] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{key}"},
            "title": f"{subscription.handler} handles {entry.name}",
            "summary": f"Subscribed to {subscription.pattern}, accepts {accepts}; deliveries"
            f" go to the queue {subscription.queue}.",
            "messages": [{"$ref": f"#/channels/{key}/messages/{m.key}"} for m in taken],
            "tags": [{"name": subscription.service}],
            "x-service": subscription.service,
            "x-handler": subscription.handler,
            "x-pattern": subscription.pattern,
            "x-celery-queue": subscription.queue,
        }
        if subscription.versions:
            operation["x-versions"] = list(subscription.versions)
        if subscription.accepts is not None:
            # The schema the handler itself reads the data with (its pydantic parameter).
            accepts = f"{subscription.handler}.accepts"
            self.schemas.setdefault(accepts, _component_schema(subscription.accepts, accepts))
            operation["x-accepts"] = {"$ref": f"#/components/schemas/{accepts}"}
        if self.broker.exchange is not None:
            operation["bindings"] = {"amqp": self._queue_binding(subscription)}
        self.operations[f"{subscription.handler}.receive.{key}"] = operation

    def _exchange_binding(self) -> dict[str, Any]:
        return {
            "is": "routingKey",
            "exchange": {
                "name": self.broker.exchange,
                "type": "topic",
                "durable": True,
                "autoDelete": False,
                "vhost": _vhost(self.broker),
            },
            "bindingVersion": AMQP_BINDING_VERSION,
        }

    def _queue_binding(self, subscription: Subscription) -> dict[str, Any]:
        # The amqp binding describes a queue only on a channel that *is* the queue, and a
        # channel here is the routing key (one event name, many handler queues). So the
        # handler's queue, bound with its pattern, is an extension of its receive operation.
        queue: dict[str, Any] = {
            "name": subscription.queue,
            "durable": True,
            "exclusive": False,
            "autoDelete": False,
            "vhost": _vhost(self.broker),
            "bindingKey": subscription.pattern,
        }
        if subscription.queue_arguments:
            queue["arguments"] = subscription.arguments
        return {"ack": True, "bindingVersion": AMQP_BINDING_VERSION, "x-queue": queue}


def _channel_description(entry: CatalogEntry) -> str:
    if not entry.publishers:
        if "*" in entry.name or "#" in entry.name:
            return (
                f"The pattern `{entry.name}`, subscribed, that matches no declared or published"
                " event name yet. In a pattern `*` stands for exactly one word and `#` for zero"
                " or more words."
            )
        return "Subscribed, but no service declared or published this name yet."
    lines = [f"Published by {', '.join(entry.publishers)}."]
    for publisher in entry.publishers:
        if entry.versions_of(publisher):
            lines.append(f"{publisher} declared {version_list(entry.versions_of(publisher))}.")
    if entry.subscriptions:
        lines.append(f"Received by {', '.join(s.handler for s in entry.subscriptions)}.")
    else:
        lines.append("No handler subscribes to it.")
    return " ".join(lines)


def _envelope(
    event_type: dict[str, Any],
    data: dict[str, Any],
    *,
    dataschema: str | None,
    source: str | None,
) -> dict[str, Any]:
    """The JSON Schema of a CloudEvents 1.0 envelope as this bus writes it (see
    :mod:`celery_events.envelope`); any other attribute is an extension and is allowed."""
    required = ["specversion", "id", "source", "type", "time", "data"]
    properties: dict[str, Any] = {
        "specversion": {"const": SPECVERSION},
        "id": {
            "type": "string", "minLength": 1,
            "description": "The event's id: the same in every delivery and retry of it.",
        },
        "source": (
            {"const": source} if source is not None
            else {"type": "string", "minLength": 1, "description": "The publishing service."}
        ),
        "type": event_type,
        "time": {"type": "string", "format": "date-time"},
        "datacontenttype": {"const": DATACONTENTTYPE},
        "dataschema": (
            {"const": dataschema} if dataschema is not None
            else {"type": "string", "format": "uri"}
        ),
        "subject": {"type": "string", "minLength": 1},
        "correlationid": {
            "type": "string",
            "description": "The id of the first event of the chain this one belongs to.",
        },
        "causationid": {
            "type": ["string", "null"],
            "description": "The id of the event whose handler published this one.",
        },
        "data": data,
    }
    if dataschema is not None:
        required.append("dataschema")
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": True,
    }


def _component_schema(document: dict[str, Any], key: str) -> dict[str, Any]:
    """``document`` as a schema of ``components/schemas/{key}``: its ``$schema`` and ``$id``
    dropped (an ``$id`` would move the base its references resolve against), and each local
    reference (``#/$defs/Item``) rewritten to point at the same place in the document."""
    schema = copy.deepcopy(document)
    schema.pop("$schema", None)
    schema.pop("$id", None)
    rebased: dict[str, Any] = _rebased(schema, f"#/components/schemas/{key}")
    return rebased


def _rebased(node: Any, base: str, names: bool = False) -> Any:
    if isinstance(node, list):
        return [_rebased(item, base) for item in node]
    if not isinstance(node, dict):
        return node
    if names:
        return {name: _rebased(schema, base) for name, schema in node.items()}
    out: dict[str, Any] = {}
    for keyword, value in node.items():
        if keyword == "$ref" and isinstance(value, str) and value.startswith("#"):
            out[keyword] = base + value[1:]
        elif keyword in _DATA_KEYWORDS:
            out[keyword] = value
        else:
            out[keyword] = _rebased(value, base, names=keyword in _NAMED_SCHEMAS)
    return out


def _fingerprint(schema: dict[str, Any] | None) -> str | None:
    return None if schema is None else fingerprint_of(schema)


def _default_version(
    declarations: list[RegisteredDeclaration], subscriptions: list[Subscription]
) -> str:
    stamps = [d.registered_at for d in declarations] + [s.registered_at for s in subscriptions]
    newest = max((s for s in stamps if s), default=None)
    if newest is None:
        return date.today().isoformat()
    return datetime.fromtimestamp(newest, timezone.utc).date().isoformat()
