"""Documents of the whole fleet, read from the registry: the AsyncAPI 3.0 description of every
event, its versions, publishers and handlers (``celery eventbus spec``)."""

from .asyncapi import (
    ASYNCAPI_VERSION,
    DEFAULT_TITLE,
    Broker,
    asyncapi_document,
    channel_key,
    to_json,
    to_yaml,
)

__all__ = [
    "ASYNCAPI_VERSION",
    "DEFAULT_TITLE",
    "Broker",
    "asyncapi_document",
    "channel_key",
    "to_json",
    "to_yaml",
]
