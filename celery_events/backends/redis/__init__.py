"""The Redis backend (``redis://``, ``rediss://``, ``unix://``, and ``sentinel://``): every
role on one Redis.

On ``sentinel://`` (kombu's form, ``master_name`` in ``broker_transport_options``) every role
below runs on the primary its sentinels name, through a client that asks them again after a
connection fails (``client.connect_sentinel``), and workers consume through the Sentinel
variant of the screening transport: publishing, consuming, the sweeper and the reaper follow a
failover. Redis replicates asynchronously, so the ``wait_for_replicas`` setting makes the
fan-out wait (``WAIT``) for replicas to hold its deliveries before a publish returns.

- transport: :class:`~.fanout.RedisFanout`, one atomic Lua script per publish (or per
  ``publish_many``, all its events together) that pushes
  every delivery, records it in the lost-delivery ledger and (once per name and process) in
  the catalog; workers consume through the screening transport (``transport.py``,
  ``screening.py``) and get a long enough visibility timeout (``worker.py``);
- recovery: the ledger sweeper and the dead-worker reaper (``worker.py``, ``liveness.py``);
- state: inbox, leases and the ledger (``inbox.py``), dead letters (``stores.py``), on the
  broker's Redis, where ``bus.redis_effects()`` commits with the inbox record; or a store the
  bus brings (``EventBus(state=...)``), the ledger kept beside its inbox;
- registry: ``stores.py``, on the broker's Redis or the ``registry_url`` one.
"""

from __future__ import annotations

from typing import Any

from .. import without_password
from ..base import Backend, Capabilities, StateStore
from .client import connect, connect_async
from .fanout import RedisFanout
from .inbox import BrokerAcks
from .liveness import held_names
from .stores import LedgerState, RedisRegistry, RedisState
from .worker import RedisRecovery

__all__ = ["CAPABILITIES", "open_backend", "stores_on"]

CAPABILITIES = Capabilities(
    atomic_fanout=True,
    atomic_batches=True,
    lost_delivery_ledger=True,
    queue_screening=True,
    dead_worker_recovery=True,
    native_delivery_limit=False,
    queue_status=True,
    transactional_effects=True,
    durable_state=True,
)


def open_backend(
    app: Any, settings: Any, broker_url: str, name: str, state: StateStore | None = None
) -> Backend:
    """The Redis backend of ``broker_url``, with the TLS options the app's kombu uses.

    With ``state`` (a store the bus brings), inboxes and dead letters live there and the
    lost-delivery ledger stays here, kept beside that store's inbox (``LedgerState``).
    """
    timeout = settings.publish_timeout
    options = app.conf.broker_transport_options or {}
    broker = connect(
        broker_url, timeout, use_ssl=app.conf.broker_use_ssl, transport_options=options
    )
    if settings.registry_url is None:
        registry_client = broker
        where = "the broker"
    else:
        # A registry of its own takes its TLS options from its own URL only (a Sentinel one
        # may take its master_name from the broker's options when its URL names none).
        registry_client = connect(
            settings.registry_url, timeout, transport_options=_sentinel_options(options)
        )
        where = without_password(settings.registry_url)
    registry = RedisRegistry(registry_client, settings.key_prefix)
    transport = RedisFanout(
        broker,
        timeout,
        key_prefix=options.get("global_keyprefix", ""),
        ledger_prefix=settings.key_prefix,
        app=app,
        # The catalog entry rides in the fan-out's script only where the registry lives.
        catalog_key=registry.published_key if registry_client is broker else None,
        wait_for_replicas=settings.wait_for_replicas,
        wait_for_replicas_timeout=settings.wait_for_replicas_timeout,
        # bus.apublish's clients (one per event loop): the same URL, TLS and options.
        connect_async=lambda: connect_async(
            broker_url, timeout, use_ssl=app.conf.broker_use_ssl, transport_options=options
        ),
    )
    return Backend(
        name=name,
        capabilities=CAPABILITIES,
        transport=transport,
        state=(
            RedisState(broker, settings.key_prefix, _broker_acks(options, settings.key_prefix))
            if state is None
            else LedgerState(state, broker, settings.key_prefix)
        ),
        registry=registry,
        recovery=RedisRecovery(broker),
        description=f"{without_password(broker_url)}; registry on {where}",
    )


def _broker_acks(options: dict[str, Any], key_prefix: str) -> BrokerAcks:
    """Where kombu's Redis transport (with ``transport.py``'s holder records) keeps the
    broker's unacked messages, as the inbox's client names them (with the global prefix)."""
    prefix = options.get("global_keyprefix", "")
    held = held_names(key_prefix, prefix)
    return BrokerAcks(
        unacked=prefix + options.get("unacked_key", "unacked"),
        unacked_index=prefix + options.get("unacked_index_key", "unacked_index"),
        holders=held.holders,
        held_prefix=held.held_prefix,
    )


def _sentinel_options(options: dict[str, Any]) -> dict[str, Any]:
    """The broker's ``master_name`` only: a registry's Sentinel URL may name its primary in
    its own query, and its sentinels' options never come from the broker's."""
    return {"master_name": options["master_name"]} if options.get("master_name") else {}


def stores_on(settings: Any) -> tuple[RedisState, RedisRegistry, str]:
    """State and registry stores on the Redis of ``settings.registry_url`` (for brokers that
    are not Redis), and where that is, for people. A ``sentinel://`` URL names its primary
    in its query (``?master_name=mymaster``)."""
    client = connect(settings.registry_url, settings.publish_timeout)
    return (
        RedisState(client, settings.key_prefix),
        RedisRegistry(client, settings.key_prefix),
        without_password(settings.registry_url),
    )
