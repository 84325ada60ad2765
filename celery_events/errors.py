"""Every exception celery-events raises on purpose.

Catch :class:`CeleryEventsError` to catch them all. Each message is a full sentence that names
the bad value and says what to do about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "CeleryEventsError",
    "ConfigurationError",
    "InvalidEventName",
    "InvalidPattern",
    "InvalidEventData",
    "EventTooLarge",
    "SchemaError",
    "InvalidEnvelope",
    "NoSubscribersError",
    "PublishError",
    "PartialPublishError",
    "NotReplicatedError",
    "PublishRefused",
    "PublishNotAllowed",
    "ForeignSourceRefused",
    "EventNotDeclared",
    "IncompatibleSchema",
    "SubscriptionNotAllowed",
    "DeliveryRefused",
    "InvalidSignature",
    "PoisonMessageError",
    "RegistryError",
    "BrokerError",
]


def describe(exc: BaseException) -> str:
    """A third-party exception's message, ready to be followed by a full stop of ours."""
    return (str(exc) or type(exc).__name__).rstrip(". ")


def shown(value: object, width: int = 60) -> str:
    """``repr(value)`` cut to ``width`` characters, to name a bad value in a message."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _restored(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class CeleryEventsError(Exception):
    """Base class of every error celery-events raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as it is, its keyword-only attributes included (Celery pickles a run's
        # exception: the prefork pool's result, a chained cause), not made again by calling
        # the class with its message, which a class with required keywords refuses.
        return _restored, (type(self), self.args, dict(self.__dict__))


class ConfigurationError(CeleryEventsError):
    """A setting, a handler declaration or a bus is misconfigured; raised at import or start-up."""


class InvalidEventName(CeleryEventsError, ValueError):
    """An event name is not dotted lowercase words, like ``user.registered``."""


class InvalidPattern(CeleryEventsError, ValueError):
    """A subscription pattern is not dotted words, ``*`` (one word) or ``#`` (zero or more)."""


class InvalidEventData(CeleryEventsError, ValueError):
    """Event data is not a JSON object, nests lists and objects deeper than the
    ``max_event_depth`` setting, has a key that is not a string, or holds a value JSON cannot
    encode; raised in the publisher, before anything is sent."""


class EventTooLarge(InvalidEventData):
    """The encoded event is larger than the ``max_event_size`` setting."""


class SchemaError(InvalidEventData):
    """Event data breaks the schema its name was declared with (``bus.declare(name,
    schema=...)``); raised in the publisher, before anything is sent.

    :attr:`path` names where in the data (``"items[0].price"``; ``""`` for the data itself) and
    :attr:`rule` the schema keyword it breaks (``"type"``, ``"required"``, ``"maximum"``...).
    """

    def __init__(self, message: str, *, path: str = "", rule: str = "") -> None:
        super().__init__(message)
        #: Where in the data the first error is, as a dotted path with ``[n]`` for list items.
        self.path = path
        #: The JSON Schema keyword (or pydantic error type) that the data breaks.
        self.rule = rule

    def __reduce__(self) -> tuple[Any, ...]:
        return (_schema_error, (str(self), self.path, self.rule))


def _schema_error(message: str, path: str, rule: str) -> SchemaError:
    return SchemaError(message, path=path, rule=rule)


class InvalidEnvelope(CeleryEventsError, ValueError):
    """An envelope is not a valid CloudEvents 1.0 event of ours.

    Raised for an envelope received from the wire (its delivery is dead-lettered), and in the
    publisher for an event that could not be sent as it is: an ``id``, ``source`` or
    ``correlation_id`` that is not a non-empty string, a ``causation_id`` that is neither that
    nor None, a ``time`` that is not a timezone-aware datetime, or extension attributes, a
    ``subject`` or a ``dataschema`` that break the CloudEvents rules (the message names the
    attribute and the rule).
    """


class NoSubscribersError(CeleryEventsError):
    """Raised by ``publish(..., require_subscribers=True)`` when nobody subscribes to the name."""


class PublishError(CeleryEventsError):
    """The broker refused the event, or did not take it within ``publish_timeout``.

    No delivery was sent, unless the message says otherwise: when Redis was reached but its
    reply was lost, the deliveries may have been queued, and the message says so.
    """


class PartialPublishError(PublishError):
    """``bus.publish_many`` sent the first :attr:`sent` events of the call, then failed.

    Only on a backend without ``atomic_batches`` (RabbitMQ, other kombu brokers): there the
    events already sent stay sent. :attr:`results` holds their
    :class:`~celery_events.PublishResult` (once the bus has them); publish the rest again
    (``events[error.sent:]``), which sends none twice.
    """

    def __init__(
        self, message: str, *, sent: int, results: Sequence[Any] = ()
    ) -> None:
        super().__init__(message)
        #: How many events of the call were sent, in order.
        self.sent = sent
        self.results = tuple(results)


class NotReplicatedError(PublishError):
    """The event's deliveries are queued on the Redis primary, but fewer replicas than the
    ``wait_for_replicas`` setting asks acknowledged them within ``wait_for_replicas_timeout``.

    The deliveries will run unless the primary fails before they replicate (then they may be
    lost with it). A caller that must not lose the event publishes the same event again
    (``bus.publish_event(event)``) once the replicas are back, which subscribers' inboxes
    absorb; publishing the data as a new event would deliver it twice.
    """

    def __init__(self, message: str, *, acknowledged: int, wanted: int) -> None:
        super().__init__(message)
        #: How many replicas acknowledged the deliveries.
        self.acknowledged = acknowledged
        #: How many the ``wait_for_replicas`` setting asks for.
        self.wanted = wanted


class PublishRefused(CeleryEventsError):
    """A middleware refused to publish the event (a permission, a schema, a signing key);
    nothing was sent. Middleware raise it, or a subclass, with a message saying why."""


class PublishNotAllowed(PublishRefused):
    """This service may not publish the event's name (the ``publish_scopes`` or
    ``protected_names`` setting); nothing was sent."""


class ForeignSourceRefused(PublishRefused):
    """The event's ``source`` is another service, and this service signs events: it signs
    only as itself, so it sends no event in another's name; nothing was sent."""


class EventNotDeclared(PublishRefused):
    """This service publishes a name (or a version of it) it did not declare, and it refuses
    undeclared events (the ``require_declarations`` setting) or the version asked for is not
    one it declared; nothing was sent."""


class IncompatibleSchema(ConfigurationError):
    """A declaration breaks the schemas already registered for its name and version under the
    name's compatibility mode; raised by ``bus.register()``, ``celery eventbus register`` and at
    worker start (which then does not start). :attr:`changes` lists what breaks."""

    def __init__(self, message: str, changes: Any = ()) -> None:
        super().__init__(message)
        #: The breaking changes (:class:`~celery_events.contracts.Change`), in order.
        self.changes = tuple(changes)


class SubscriptionNotAllowed(ConfigurationError):
    """This service may not subscribe to a pattern (the ``subscribe_scopes`` or
    ``protected_names`` setting); raised by ``@bus.subscribe``, ``bus.register()`` and at worker
    start, which then does not start."""


class DeliveryRefused(CeleryEventsError):
    """A receive hook refused a delivery before its handler could run: the delivery is
    dead-lettered at once with :attr:`reason` and the handler never runs.

    Raised by middleware (see :meth:`~celery_events.Middleware.receive`), with a reason such
    as ``"invalid_signature"`` and a message saying what was wrong.
    """

    def __init__(self, message: str, *, reason: str = "rejected") -> None:
        super().__init__(message)
        #: The dead letter's reason (:class:`~celery_events.deadletters.Reason`).
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        # Celery and Flower rebuild a task's exception from its type and args (and a prefork
        # pool pickles it): keep the reason across that.
        return (_refused, (str(self), self.reason))


def _refused(message: str, reason: str) -> DeliveryRefused:
    return DeliveryRefused(message, reason=reason)


class InvalidSignature(CeleryEventsError):
    """A signature is missing, unreadable, made with an unknown key, made by another service
    than the event's source, or does not match what it signs."""


class PoisonMessageError(CeleryEventsError):
    """A delivery was started ``max_deliveries`` times and its worker died each time; it is
    dead-lettered instead of being run again."""


class RegistryError(CeleryEventsError):
    """The subscription registry could not be read or written."""


class BrokerError(CeleryEventsError):
    """The broker could not be reached or read (for example by ``eventbus status``)."""
