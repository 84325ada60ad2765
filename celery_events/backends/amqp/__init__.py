"""The RabbitMQ backend (``amqp://``, ``amqps://``, ``pyamqp://``).

- transport: :class:`~.transport.AmqpTransport`, one confirmed, ``mandatory`` message per
  publish to a topic exchange; the broker copies it to every subscriber's queue in one
  routing step (``topology.py`` names and argues every exchange and queue);
- worker side (``worker.py``): a consumer bootstep that consumes each handler's own queue,
  screens what it takes and turns each copy into that handler's delivery with its own task
  id; retries go back to the handler's queue alone (on quorum queues through RabbitMQ's
  native delayed delivery); what the broker dead-letters becomes the bus's dead letters;
- recovery: RabbitMQ's own (a dead consumer's unacked messages go back on their queue when
  its connection drops; quorum queues' delivery limit stops a message that kills workers);
- registry: on RabbitMQ itself (``registry.py``, a stream) when ``registry_url`` is unset, or
  on the ``registry_url`` Redis;
- state (inboxes, dead letters): the ``state_url`` Redis (``redis://`` or ``sentinel://``),
  else the ``registry_url`` Redis, else the store the bus brings (``EventBus(state=...)``,
  Django's ``DatabaseState``).

========================  =====================  ==========================================
registry                  state                  settings
========================  =====================  ==========================================
RabbitMQ (stream)         Redis / Sentinel       ``state_url="redis://..."``
RabbitMQ (stream)         Django database        ``EventBus(state=DatabaseState())``
Redis                     the same Redis         ``registry_url="redis://..."``
Redis                     another Redis          ``registry_url=...``, ``state_url=...``
========================  =====================  ==========================================
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ...errors import ConfigurationError
from .. import without_password
from ..base import (
    Backend,
    Capabilities,
    DeadLetterRecords,
    Inbox,
    RegistryStore,
    StateStore,
    TraceStore,
)
from .registry import AmqpRegistry
from .topology import Topology
from .transport import AmqpTransport

__all__ = ["CAPABILITIES", "open_backend"]


CAPABILITIES = Capabilities(
    # One message routed by the broker to every bound queue in one step.
    atomic_fanout=True,
    # Workers screen every message of an event queue; anything else is dead-lettered.
    queue_screening=True,
    # RabbitMQ requeues a dead consumer's unacked messages itself when its connection drops.
    dead_worker_recovery=True,
    # Quorum queues' x-delivery-limit (the default queue type; classic queues have none).
    native_delivery_limit=True,
    # Waiting counts over AMQP, in-flight and ages from the management API (status.py).
    queue_status=True,
    # With the state on Redis (state_url or registry_url); not beside another store.
    transactional_effects=True,
    durable_state=True,
)


class NoState:
    """The state store of a bus given none: enough to publish, which reads no state; asking
    for an inbox or dead letters (a worker with handlers, ``eventbus dead-letters``) raises
    :class:`ConfigurationError` naming the stores to choose from."""

    MESSAGE = (
        "RabbitMQ keeps no inboxes or dead letters, so a service with handlers (and the"
        " dead-letters commands) needs a state store: pass state_url='redis://host:6379/0' (or"
        " a sentinel:// URL) to EventBus, or registry_url='redis://...' to keep registry and"
        " state on one Redis, or EventBus(state=DatabaseState()) with the Django integration"
        " (CELERY_EVENTS['state'] = 'database')."
    )

    def inbox(self, service: str) -> Inbox:
        raise ConfigurationError(self.MESSAGE)

    def dead_letters(self, service: str) -> DeadLetterRecords:
        raise ConfigurationError(self.MESSAGE)

    def dead_letter_services(self) -> list[str]:
        raise ConfigurationError(self.MESSAGE)

    def traces(self) -> TraceStore:
        raise ConfigurationError(
            "trace_records is on, but RabbitMQ keeps no trace records: pass"
            " state_url='redis://host:6379/0' (or registry_url='redis://...') to EventBus so"
            " that they are kept in that Redis, or turn trace_records off."
        )

    def close(self) -> None:
        """Nothing to close."""


def open_backend(
    app: Any, settings: Any, broker_url: str, name: str, state: StateStore | None = None
) -> Backend:
    """The RabbitMQ backend of ``broker_url``; see the module for where registry and state
    live. Without a state store it still publishes (a publisher needs none); its inboxes and
    dead letters raise :class:`ConfigurationError`, and so does a worker with handlers when
    it starts."""
    timeout = settings.publish_timeout
    places = []
    registry: RegistryStore
    # The Redis backend (and redis-py) is loaded only when a Redis is named, so that a fleet
    # with its registry on RabbitMQ and its state elsewhere never loads them.
    if settings.registry_url is not None:
        from ..redis.client import connect
        from ..redis.stores import RedisRegistry, RedisState

        registry_client = connect(settings.registry_url, timeout)
        registry = RedisRegistry(registry_client, settings.key_prefix)
        places.append(f"registry on {without_password(settings.registry_url)}")
    else:
        registry = AmqpRegistry.from_app(app, key_prefix=settings.key_prefix, timeout=timeout)
        places.append("registry on RabbitMQ")
    own_state: StateStore
    if state is not None:
        own_state = state
    elif settings.state_url is not None:
        from ..redis.client import connect
        from ..redis.stores import RedisState

        own_state = RedisState(connect(settings.state_url, timeout), settings.key_prefix)
        places.append(f"state on {without_password(settings.state_url)}")
    elif settings.registry_url is not None:
        own_state = RedisState(registry_client, settings.key_prefix)
        places[-1] = f"registry and state on {without_password(settings.registry_url)}"
    else:
        own_state = NoState()
        places.append("no state store (publishing only)")
    topology = Topology(
        settings.key_prefix, queue_type=settings.queue_type, max_deliveries=settings.max_deliveries
    )
    capabilities = CAPABILITIES
    if settings.queue_type != "quorum":
        capabilities = dataclasses.replace(capabilities, native_delivery_limit=False)
    return Backend(
        name=name,
        capabilities=capabilities,
        transport=AmqpTransport(
            app, _failover_urls(app, broker_url), topology, timeout, registry, settings
        ),
        state=own_state,
        registry=registry,
        recovery=None,
        description=(
            f"{without_password(broker_url)} ({settings.queue_type} queues); {'; '.join(places)}"
        ),
        topology=topology,
    )


def _failover_urls(app: Any, first: str) -> str:
    """Every URL of the app's ``broker_url`` (``;``-separated, or a list), for kombu's
    failover: publishing and the worker's declarations move on to the next node when one is
    down (``open_backend`` is given the first URL alone)."""
    urls = app.conf.broker_url
    if isinstance(urls, (list, tuple)):
        listed = [str(u).strip() for u in urls]
    else:
        listed = [u.strip() for u in str(urls or "").split(";")]
    listed = [u for u in listed if u]
    return ";".join(listed) if len(listed) > 1 else first
