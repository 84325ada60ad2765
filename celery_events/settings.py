"""Every setting of an :class:`~celery_events.EventBus`, its default, and its validation.

Settings are keyword arguments of ``EventBus(app, service=..., **settings)``; the Django and
Flask integrations read them from ``CELERY_EVENTS`` and pass them on. Each is read here and
nowhere else, and an unknown or ill-typed one is refused when the bus is created.
"""

from __future__ import annotations

import difflib
import math
import re
import string
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from ._plainjson import DEFAULT_MAX_DEPTH
from .backends.capabilities import Capabilities
from .errors import ConfigurationError, InvalidPattern, shown
from .names import validate_pattern

__all__ = ["Settings", "validate_service_name", "is_seconds"]

_SERVICE_RE = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")


def validate_service_name(service: object) -> str:
    """Return ``service`` if it is a valid service name, else raise :class:`ConfigurationError`."""
    if not isinstance(service, str) or not _SERVICE_RE.match(service):
        raise ConfigurationError(
            f"{service!r} is not a valid service name. Use one lowercase word of letters,"
            " digits, '_' or '-', such as 'orders'."
        )
    return service


def _check_scopes(setting: str, scopes: object) -> None:
    """Refuse a ``publish_scopes`` or ``subscribe_scopes`` value that is not ``None`` or
    ``{service: [pattern, ...]}``, naming the bad part."""
    example = "{'payments': ['payments.#'], 'orders': ['order.*']}"
    if scopes is None:
        return
    if not isinstance(scopes, Mapping):
        raise ConfigurationError(
            f"The setting {setting} must be a dict of service names to lists of event name"
            f" patterns, such as {example}, or None; not {shown(scopes)}."
        )
    for service, patterns in scopes.items():
        try:
            validate_service_name(service)
        except ConfigurationError as exc:
            raise ConfigurationError(f"The setting {setting} has the key {shown(service)}: {exc}") from None
        if not isinstance(patterns, tuple):
            raise ConfigurationError(
                f"The setting {setting}[{service!r}] must be a list of event name patterns, such"
                f" as ['payments.#'] ([] for none at all), not {shown(patterns)}."
            )
        for pattern in patterns:
            try:
                validate_pattern(pattern)
            except InvalidPattern as exc:
                raise ConfigurationError(
                    f"The setting {setting}[{service!r}] holds {shown(pattern)}: {exc}"
                ) from None


#: URL schemes a registry (and state) Redis may have: one server, or a primary its sentinels
#: name (``master_name`` in the URL's query, or the broker's transport options).
REGISTRY_SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://")


#: The shortest duration a seconds setting may have: durations become whole milliseconds in
#: Redis (PX), and zero milliseconds is an error there.
MIN_SECONDS = 0.001

#: RabbitMQ: the widest fan-out published straight to the events exchange (see
#: ``relay_fanout_above``); chosen from measurement (benchmarks/RESULTS.md, issue 12).
RELAY_FANOUT_ABOVE = 25


#: The highest max_event_depth allowed. Pickling (which a prefork pool does with every task)
#: recurses about twice per level and fails from about 450 levels at the default recursion
#: limit of 1000; 200 leaves room for the frames of the worker that pickles it.
MAX_EVENT_DEPTH = 200


def is_seconds(value: object) -> bool:
    """Whether ``value`` is a usable duration: a finite number of seconds, at least 1 ms.

    NaN compares false with everything, so a plain ``value <= 0`` check lets it (and
    infinity) through to fail later, in a timer or in Redis.
    """
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and value >= MIN_SECONDS
    )


def _queue_template_problem(template: str) -> str | None:
    """What is wrong with a queue template, or None: only ``{service}`` may be filled in."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"has unbalanced braces ({exc}); write a literal brace as '{{{{' or '}}}}'"
    fields = [(name, spec, conversion) for _, name, spec, conversion in parts if name is not None]
    for name, spec, conversion in fields:
        if name != "service" or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            return f"has the placeholder {shown!r}; only '{{service}}' is filled in"
    if not fields:
        return "must contain '{service}' so that every service gets its own queue"
    return None


@dataclass(frozen=True)
class Settings:
    """The bus's settings (the documentation's Settings page says what each one means)."""

    #: Where the subscription registry lives. ``None``: the broker, when it is Redis.
    registry_url: str | None = None
    #: Where inboxes and dead letters live on a broker that keeps none (RabbitMQ): a
    #: ``redis://``, ``rediss://``, ``unix://`` or ``sentinel://`` URL. ``None``: the
    #: ``registry_url`` Redis, or the store the bus brings (``EventBus(state=...)``).
    state_url: str | None = None
    #: RabbitMQ only: the type of each handler's queue, ``"quorum"`` (replicated, with a
    #: delivery limit and native delayed retries) or ``"classic"``.
    queue_type: str = "quorum"
    #: RabbitMQ only: the broker's ``consumer_timeout`` in seconds (RabbitMQ's default is 30
    #: minutes). On classic queues a retry waits in the worker, which must ack within it.
    broker_consumer_timeout: float = 1800.0
    #: The RabbitMQ management API ``celery eventbus status`` reads (``http://user:pw@host:15672``;
    #: several joined by ``;`` are tried in turn); ``None``: each node of the broker URL on port
    #: 15672 with its user and password, in turn.
    management_url: str | None = None
    #: RabbitMQ only: a publish to more subscriptions than this goes to one intake queue
    #: (one confirm, as cheap as a publish to one) and every worker's relay republishes it to
    #: the events exchange; ``None`` always publishes to the exchange directly. The relay
    #: adds one hop of latency; a wide fan-out's confirm waits for every queue's disk.
    relay_fanout_above: int | None = RELAY_FANOUT_ABOVE
    #: Prefix of every Redis key the bus owns (registry, catalog).
    key_prefix: str = "celery_events:"
    #: Queue name of a service's handlers unless a handler names its own; ``{service}`` is
    #: replaced by the service name.
    queue_template: str = "events.{service}"
    #: Largest JSON encoding of event data, in bytes.
    max_event_size: int = 256 * 1024
    #: Deepest nesting of lists and objects in event data (``{}`` is one level), at most
    #: ``MAX_EVENT_DEPTH`` (200).
    max_event_depth: int = DEFAULT_MAX_DEPTH
    #: Longest a publish may take, connecting and retrying included, before PublishError.
    publish_timeout: float = 5.0
    #: How often a publisher checks the registry for changes, in seconds.
    registry_refresh_interval: float = 0.25
    #: Oldest registry view a publish may use, in seconds; older means a synchronous reload.
    registry_max_staleness: float = 1.0
    #: Redis replicas that must hold a publish's deliveries before it returns (``WAIT``):
    #: Redis replicates asynchronously, so a primary that fails right after a publish can
    #: take its deliveries with it. 0: do not wait. Fewer acknowledgements within
    #: ``wait_for_replicas_timeout`` raise :class:`~celery_events.errors.NotReplicatedError`.
    wait_for_replicas: int = 0
    #: Longest a publish waits for the ``wait_for_replicas`` replicas, in seconds (shorter than
    #: ``publish_timeout``).
    wait_for_replicas_timeout: float = 1.0
    #: Raise NoSubscribersError when an event matches no subscription.
    require_subscribers: bool = False
    #: Record the service's subscriptions when its worker starts.
    register_on_worker_start: bool = True
    #: Default retries of a handler before its delivery becomes a dead letter.
    max_retries: int = 5
    #: Default first backoff step in seconds; retry n waits up to ``retry_backoff * 2**n``.
    retry_backoff: float = 2.0
    #: Default longest wait between two retries, in seconds.
    retry_backoff_max: float = 600.0
    #: Default: wait a random time up to the backoff ("full jitter") rather than all of it.
    retry_jitter: bool = True
    #: Default hard time limit of a handler, in seconds (the worker kills it past that).
    handler_time_limit: float = 300.0
    #: How long the inbox remembers that a delivery was handled, in seconds.
    inbox_ttl: float = 7 * 24 * 3600.0
    #: Deliveries of one message that started but never finished (their worker died) before
    #: it is dead-lettered as a poison message.
    max_deliveries: int = 5
    #: Seconds after its last sign of life (publish, start of a run, an expected retry) before
    #: a delivery that is in no queue, held by no worker and not handled is presumed lost and
    #: sent again. The subscribing service's setting counts. Short, since nothing that waits
    #: in a queue, sits in a worker's prefetch or runs is resent: the case is a message a
    #: worker took from Redis and died before recording (kombu pops, then records), which
    #: should run again within the recovery time the documentation promises (Recovery).
    redelivery_timeout: float = 15.0
    #: How often a worker looks for lost deliveries of its service, in seconds.
    sweep_interval: float = 5.0
    #: Longest a delivery waits in its worker for an unreachable state store (inbox, dead
    #: letters) before it is handed back to the broker, to run again after a backoff; an
    #: outage never counts as a failure of the handler, and no delivery is acknowledged
    #: unhandled. After the handler ran, its success is waited for as long as its time limit
    #: allows instead.
    state_outage_wait: float = 30.0
    #: Most dead letters kept per service; ``None`` keeps all. Dropping is logged.
    dead_letter_limit: int | None = None
    #: Turn on the task events Flower needs (workers send them, publishers send task-sent),
    #: unless the app's configuration sets them itself.
    task_events: bool = True
    #: Capabilities the service needs from its backend (names of
    #: :class:`~celery_events.backends.base.Capabilities` fields, such as ``"atomic_fanout"``);
    #: a backend lacking one is a ConfigurationError when it is made, never a downgrade.
    require: tuple[str, ...] = ()
    # -- trust (see celery_events/trust and the documentation's Security page) ------------------------
    #: This service's signing key: the path of its ``{service}.{key_id}.key`` (Ed25519) or
    #: ``.hmac`` file, or ``{"key_id": ..., "key": text}``; ``None``: it does not sign.
    signing_key: Any = None
    #: The verification keys of the services this one trusts: a directory of ``.pub`` and
    #: ``.hmac`` files, a list of files and directories, or ``{service: {key_id: text}}``.
    trusted_keys: Any = None
    #: Whether a delivery must carry a valid signature to run; ``None``: yes when
    #: ``trusted_keys`` is set.
    require_signatures: bool | None = None
    #: The oldest a signed event may be (from its ``time``) when it is received, in seconds.
    signature_max_age: float = 7 * 24 * 3600.0
    #: Which services may publish which names: ``{service: [pattern, ...]}``. A listed service
    #: may publish only names its patterns match; one not listed, any but a protected name;
    #: ``None``: no service is listed. (See celery_events/trust/scopes.py.)
    publish_scopes: Any = None
    #: Which services may subscribe to which names, as ``publish_scopes``: a subscription
    #: pattern is allowed only if every name it can match is.
    subscribe_scopes: Any = None
    #: Patterns of names that only services granted them (listed in the scopes, with a
    #: pattern matching the name) may publish or subscribe to.
    protected_names: tuple[str, ...] = ()
    #: The keys sensitive fields are encrypted and decrypted with: a directory of
    #: ``{key_id}.aes`` files, a list of such files and directories, or ``{key_id: base64
    #: key}``; ``None``: this service neither encrypts nor decrypts (fields stay clear, and a
    #: delivery with an encrypted field is dead-lettered ``undecryptable``).
    encryption_keys: Any = None
    #: The id of the key in ``encryption_keys`` that encrypts; ``None``: the greatest id (with
    #: ids made by ``celery eventbus keys generate --aes``, the newest). Every key decrypts.
    encryption_key_id: str | None = None
    # -- contracts (see celery_events/contracts and the documentation's Event contracts page) ---------
    #: Refuse to publish names this service did not declare (``bus.declare``) with
    #: :class:`~celery_events.EventNotDeclared`; by default an undeclared name is published
    #: without a schema.
    require_declarations: bool = False
    # -- observability (see celery_events/observability and the documentation's Observability page) -
    #: OpenTelemetry spans: a ``send {event}`` producer span per publish and a ``process
    #: {event}`` consumer span per delivery run, the context carried in the envelope
    #: (``traceparent``, ``tracestate``). Needs the ``otel`` extra.
    tracing: bool = False
    #: How a ``process`` span relates to the ``send`` span of its event: ``"link"`` (a new
    #: trace per delivery, linked to the publisher's, as the messaging conventions advise) or
    #: ``"parent"`` (the delivery's span is a child of the send span: one trace).
    tracing_context: str = "link"
    #: Prometheus metrics of publishes and deliveries. Needs the ``prometheus`` extra.
    metrics: bool = False
    #: The port a worker serves its metrics on (``/metrics``, all its pool processes'); ``None``:
    #: no server (the app exports the default registry itself).
    metrics_port: int | None = None
    #: The address the worker's metrics server listens on: every interface by default (a
    #: Prometheus server scrapes it from another host); ``"127.0.0.1"`` keeps it local.
    metrics_address: str = "0.0.0.0"
    #: Keep the records ``celery eventbus trace`` shows: each event, what caused it, and each
    #: delivery's state, worker and timings, in the state store for ``trace_ttl`` seconds.
    trace_records: bool = False
    #: How long trace records are kept, in seconds.
    trace_ttl: float = 7 * 24 * 3600.0

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Settings:
        """Build settings from keyword options, refusing unknown names and bad values."""
        known = {f.name: f for f in fields(cls)}
        for name in options:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigurationError(
                    f"{name!r} is not a celery-events setting.{hint} The settings are:"
                    f" {', '.join(sorted(known))}."
                )
        require = options.get("require")
        if isinstance(require, list):
            options = {**options, "require": tuple(require)}
        elif isinstance(require, (set, frozenset)):
            options = {**options, "require": tuple(sorted(require))}
        for name in ("protected_names",):
            value = options.get(name)
            if isinstance(value, (list, set, frozenset)):
                options = {**options, name: tuple(sorted(value) if not isinstance(value, list) else value)}
        for name in ("publish_scopes", "subscribe_scopes"):
            value = options.get(name)
            if isinstance(value, Mapping):
                # Lists become tuples: the policy is immutable. Bad entries are kept as they
                # are, for validate() to name.
                options = {
                    **options,
                    name: {
                        k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in value.items()
                    },
                }
        settings = replace(cls(), **options)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`ConfigurationError` naming the first bad value."""
        for name in (
            "publish_timeout",
            "registry_refresh_interval",
            "registry_max_staleness",
            "retry_backoff",
            "retry_backoff_max",
            "handler_time_limit",
            "inbox_ttl",
            "redelivery_timeout",
            "sweep_interval",
            "wait_for_replicas_timeout",
            "state_outage_wait",
            "broker_consumer_timeout",
            "signature_max_age",
            "trace_ttl",
        ):
            value = getattr(self, name)
            if not is_seconds(value):
                raise ConfigurationError(
                    f"The setting {name} must be a finite, positive number of seconds (at"
                    f" least {MIN_SECONDS}), not {value!r}."
                )
        for name, minimum in (
            ("max_event_size", 1), ("max_event_depth", 1), ("max_retries", 0),
            ("max_deliveries", 1), ("wait_for_replicas", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigurationError(
                    f"The setting {name} must be a whole number >= {minimum}, not {value!r}."
                )
        if self.max_event_depth > MAX_EVENT_DEPTH:
            raise ConfigurationError(
                f"The setting max_event_depth must be at most {MAX_EVENT_DEPTH}, not"
                f" {self.max_event_depth}: deeper data exhausts Python's recursion limit when"
                " a prefork worker pickles it (about 450 levels kill the worker). Flatten the"
                " data instead."
            )
        if self.dead_letter_limit is not None and (
            isinstance(self.dead_letter_limit, bool)
            or not isinstance(self.dead_letter_limit, int)
            or self.dead_letter_limit < 1
        ):
            raise ConfigurationError(
                "The setting dead_letter_limit must be None (keep every dead letter) or a"
                f" whole number >= 1, not {self.dead_letter_limit!r}."
            )
        if self.relay_fanout_above is not None and (
            isinstance(self.relay_fanout_above, bool)
            or not isinstance(self.relay_fanout_above, int)
            or self.relay_fanout_above < 1
        ):
            raise ConfigurationError(
                "The setting relay_fanout_above must be None (never relay) or a whole number"
                f" >= 1 of subscriptions, not {shown(self.relay_fanout_above)}."
            )
        if self.registry_refresh_interval >= self.registry_max_staleness:
            raise ConfigurationError(
                "The setting registry_refresh_interval"
                f" ({self.registry_refresh_interval}) must be shorter than"
                f" registry_max_staleness ({self.registry_max_staleness}), or every publish"
                " would reload the registry."
            )
        if not isinstance(self.queue_template, str):
            raise ConfigurationError(
                f"The setting queue_template must be a string such as 'events.{{service}}', not"
                f" {self.queue_template!r}."
            )
        problem = _queue_template_problem(self.queue_template)
        if problem is not None:
            raise ConfigurationError(
                f"The setting queue_template {self.queue_template!r} {problem}, as in"
                " 'events.{service}'."
            )
        if self.wait_for_replicas and self.wait_for_replicas_timeout >= self.publish_timeout:
            raise ConfigurationError(
                "The setting wait_for_replicas_timeout"
                f" ({self.wait_for_replicas_timeout}) must be shorter than publish_timeout"
                f" ({self.publish_timeout}), which bounds the whole publish, the wait included."
            )
        if self.registry_url is not None and (
            not isinstance(self.registry_url, str)
            or not self.registry_url.startswith(REGISTRY_SCHEMES)
        ):
            raise ConfigurationError(
                f"The setting registry_url {shown(self.registry_url)} must be a redis://,"
                " rediss://, unix:// or sentinel:// URL (a string, such as"
                " 'sentinel://host:26379;sentinel://host:26380?master_name=mymaster'), or None"
                " to use the broker."
            )
        if self.state_url is not None and (
            not isinstance(self.state_url, str)
            or not self.state_url.startswith(("redis://", "rediss://", "unix://", "sentinel://"))
        ):
            raise ConfigurationError(
                f"The setting state_url {shown(self.state_url)} must be a redis://, rediss://,"
                " unix:// or sentinel:// URL (a string), or None to keep inboxes and dead"
                " letters in the registry_url Redis or the bus's own state store."
            )
        if self.queue_type not in ("quorum", "classic"):
            raise ConfigurationError(
                f"The setting queue_type {shown(self.queue_type)} must be 'quorum' (the"
                " default: replicated queues with a delivery limit) or 'classic'."
            )
        if self.management_url is not None and (
            not isinstance(self.management_url, str)
            or not self.management_url.strip(" ;")
            or not all(
                piece.startswith(("http://", "https://"))
                and urllib.parse.urlsplit(piece).hostname
                for piece in (p.strip() for p in self.management_url.split(";"))
                if piece
            )
        ):
            raise ConfigurationError(
                f"The setting management_url {shown(self.management_url)} must be the http:// or"
                " https:// URL of the RabbitMQ management API, such as"
                " 'http://guest:guest@localhost:15672' (or several, one per node, joined by"
                " ';'), or None to use each broker node's host on port 15672."
            )
        for name in (
            "require_subscribers", "register_on_worker_start", "retry_jitter", "task_events",
            "require_declarations", "tracing", "metrics", "trace_records",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(f"The setting {name} must be True or False.")
        if isinstance(self.require, str) or not isinstance(self.require, tuple) or not all(
            isinstance(name, str) for name in self.require
        ):
            raise ConfigurationError(
                f"The setting require must be a list of capability names such as"
                f" ['atomic_fanout', 'lost_delivery_ledger'], not {self.require!r}."
            )
        known = Capabilities.names()
        unknown = [name for name in self.require if name not in known]
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(
                f"The setting require names {unknown[0]!r}, which is not a capability.{hint}"
                f" The capabilities are {', '.join(known)}."
            )
        if self.tracing_context not in ("link", "parent"):
            raise ConfigurationError(
                f"The setting tracing_context must be 'link' or 'parent', not"
                f" {self.tracing_context!r}."
            )
        if not isinstance(self.metrics_address, str) or not self.metrics_address:
            raise ConfigurationError(
                f"The setting metrics_address must be an address to listen on, such as"
                f" '127.0.0.1', not {self.metrics_address!r}."
            )
        if self.metrics_port is not None and not self.metrics:
            raise ConfigurationError(
                "The setting metrics_port serves the metrics of metrics=True; set metrics=True"
                " too, or leave metrics_port out."
            )
        if self.metrics_port is not None and (
            isinstance(self.metrics_port, bool)
            or not isinstance(self.metrics_port, int)
            or not 0 <= self.metrics_port <= 65535
        ):
            raise ConfigurationError(
                f"The setting metrics_port must be a port number (0 to 65535) or None, not"
                f" {self.metrics_port!r}."
            )
        if self.require_signatures is not None and not isinstance(self.require_signatures, bool):
            raise ConfigurationError(
                "The setting require_signatures must be True, False or None (required when"
                " trusted_keys is set)."
            )
        if isinstance(self.protected_names, str) or not isinstance(
            self.protected_names, tuple
        ):
            raise ConfigurationError(
                "The setting protected_names must be a list of event name patterns such as"
                f" ['payments.#'], not {shown(self.protected_names)}."
            )
        for pattern in self.protected_names:
            try:
                validate_pattern(pattern)
            except InvalidPattern as exc:
                raise ConfigurationError(f"The setting protected_names holds {shown(pattern)}: {exc}") from None
        for name in ("publish_scopes", "subscribe_scopes"):
            _check_scopes(name, getattr(self, name))
        if not isinstance(self.key_prefix, str) or not self.key_prefix:
            raise ConfigurationError("The setting key_prefix must be a non-empty string.")
