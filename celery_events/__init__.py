"""celery-events: an event bus between Celery services.

A service publishes named events; every service that subscribed a handler to a matching name
or pattern gets its own delivery, an ordinary Celery task on its own queue.

>>> from celery import Celery
>>> from celery_events import EventBus, Event
>>> bus = EventBus(Celery("orders", broker="redis://127.0.0.1:6379/0"), service="orders")
"""

from ._delivery import Handler, RetryPolicy
from .backends.base import Backend, Capabilities
from .bus import Delivery, EventBus, PublishResult, bus_for
from .deadletters import DeadLetter, DeadLetterNotFound, DeadLetterStore, ReplayError
from .declarations import Declaration
from .envelope import Event
from .errors import (
    BrokerError,
    CeleryEventsError,
    ConfigurationError,
    DeliveryRefused,
    EventNotDeclared,
    EventTooLarge,
    ForeignSourceRefused,
    IncompatibleSchema,
    InvalidEnvelope,
    InvalidEventData,
    InvalidEventName,
    InvalidPattern,
    InvalidSignature,
    NoSubscribersError,
    NotReplicatedError,
    PartialPublishError,
    PoisonMessageError,
    PublishError,
    PublishNotAllowed,
    PublishRefused,
    RegistryError,
    SchemaError,
    SubscriptionNotAllowed,
)
from .middleware import HandlerCall, Middleware, PublishCall, Receipt
from .outcomes import Reject, Retry
from .registry import RegisteredDeclaration, Registry, Subscription
from .settings import Settings

__all__ = [
    # the bus
    "EventBus",
    "bus_for",
    "Event",
    "PublishResult",
    "Delivery",
    "Declaration",
    "Subscription",
    "RegisteredDeclaration",
    "Registry",
    "Settings",
    "Handler",
    "RetryPolicy",
    # backends
    "Backend",
    "Capabilities",
    # middleware
    "Middleware",
    "PublishCall",
    "HandlerCall",
    "Receipt",
    # steering a delivery from a handler
    "Retry",
    "Reject",
    # dead letters
    "DeadLetter",
    "DeadLetterStore",
    # errors
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
    "SubscriptionNotAllowed",
    "EventNotDeclared",
    "IncompatibleSchema",
    "DeliveryRefused",
    "InvalidSignature",
    "RegistryError",
    "BrokerError",
    "PoisonMessageError",
    "DeadLetterNotFound",
    "ReplayError",
]

__version__ = "0.1.0"
