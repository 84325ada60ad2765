"""Every setting of an :class:`~celery_events.EventBus`, its default, and its validation.

Settings are keyword arguments of ``EventBus(app, service=..., **settings)``; the Django and
Flask integrations read them from ``CELERY_EVENTS`` and pass them on. Each is read here and
nowhere else, and an unknown or ill-typed one is refused when the bus is created.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, fields, replace
from typing import Any

from ._plainjson import DEFAULT_MAX_DEPTH
from .errors import ConfigurationError

__all__ = ["Settings", "validate_service_name"]

_SERVICE_RE = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")


def validate_service_name(service: object) -> str:
    """Return ``service`` if it is a valid service name, else raise :class:`ConfigurationError`."""
    if not isinstance(service, str) or not _SERVICE_RE.match(service):
        raise ConfigurationError(
            f"{service!r} is not a valid service name. Use one lowercase word of letters,"
            " digits, '_' or '-', such as 'orders'."
        )
    return service


@dataclass(frozen=True)
class Settings:
    """The bus's settings (see the README's "Settings" table for each one's meaning)."""

    #: Where the subscription registry lives. ``None``: the broker, when it is Redis.
    registry_url: str | None = None
    #: Prefix of every Redis key the bus owns (registry, catalog).
    key_prefix: str = "celery_events:"
    #: Queue name of a service's handlers unless a handler names its own; ``{service}`` is
    #: replaced by the service name.
    queue_template: str = "events.{service}"
    #: Largest JSON encoding of event data, in bytes.
    max_event_size: int = 256 * 1024
    #: Deepest nesting of lists and objects in event data (``{}`` is one level).
    max_event_depth: int = DEFAULT_MAX_DEPTH
    #: Longest a publish may take, connecting and retrying included, before PublishError.
    publish_timeout: float = 5.0
    #: How often a publisher checks the registry for changes, in seconds.
    registry_refresh_interval: float = 0.25
    #: Oldest registry view a publish may use, in seconds; older means a synchronous reload.
    registry_max_staleness: float = 1.0
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
    #: sent again. The subscribing service's setting counts.
    redelivery_timeout: float = 60.0
    #: How often a worker looks for lost deliveries of its service, in seconds.
    sweep_interval: float = 5.0
    #: Most dead letters kept per service; ``None`` keeps all. Dropping is logged.
    dead_letter_limit: int | None = None
    #: Turn on the task events Flower needs (workers send them, publishers send task-sent),
    #: unless the app's configuration sets them itself.
    task_events: bool = True

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
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(
                    f"The setting {name} must be a positive number of seconds, not {value!r}."
                )
        for name, minimum in (
            ("max_event_size", 1), ("max_event_depth", 1), ("max_retries", 0), ("max_deliveries", 1)
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigurationError(
                    f"The setting {name} must be a whole number >= {minimum}, not {value!r}."
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
        if self.registry_refresh_interval >= self.registry_max_staleness:
            raise ConfigurationError(
                "The setting registry_refresh_interval"
                f" ({self.registry_refresh_interval}) must be shorter than"
                f" registry_max_staleness ({self.registry_max_staleness}), or every publish"
                " would reload the registry."
            )
        if "{service}" not in self.queue_template:
            raise ConfigurationError(
                f"The setting queue_template {self.queue_template!r} must contain '{{service}}'"
                " so that every service gets its own queue."
            )
        if self.registry_url is not None and not self.registry_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ConfigurationError(
                f"The setting registry_url {self.registry_url!r} must be a redis://, rediss://"
                " or unix:// URL."
            )
        for name in (
            "require_subscribers", "register_on_worker_start", "retry_jitter", "task_events"
        ):
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(f"The setting {name} must be True or False.")
        if not isinstance(self.key_prefix, str) or not self.key_prefix:
            raise ConfigurationError("The setting key_prefix must be a non-empty string.")
