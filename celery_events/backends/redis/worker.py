"""What a worker of a Redis-brokered app needs (the Redis backend's worker side).

Before the worker is built (``celeryd_init``, through ``RedisFanout.prepare_worker``): use the
screening Redis transport (``transport.py``), make the broker's visibility timeout longer than
any retry wait plus handler time limit, and prefetch one message per process unless the user
chose otherwise. The start-up check refuses a worker whose own ``visibility_timeout`` is too
short. Once it runs (``worker_ready``, :class:`RedisRecovery`): look for lost deliveries every
``sweep_interval`` seconds (the ledger, ``inbox.py``), and put back on their queues the unacked
messages of worker processes that died (``liveness.py``).
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis

from ... import _plainjson
from ...deadletters import DeadLetter, Reason, new_letter
from ...errors import ConfigurationError
from .. import broker_url_of
from ..base import ServiceBus
from .client import is_sentinel_url
from .ledger import Ledger
from .liveness import Reaper, keep_alive
from .screening import VISIBILITY_MARGIN, needed_visibility_timeout

__all__ = [
    "SENTINEL_TRANSPORT",
    "TRANSPORT",
    "RedisRecovery",
    "Sweeper",
    "check_visibility_timeout",
    "configure_worker",
    "needed_visibility_timeout",
]

log = logging.getLogger(__name__)

TRANSPORT = "celery_events.backends.redis.transport:Transport"
#: The same over kombu's Sentinel channel, for ``sentinel://`` brokers.
SENTINEL_TRANSPORT = "celery_events.backends.redis.transport:SentinelTransport"
#: The transport's path before the backends moved (apps may have set it themselves).
OLD_TRANSPORT = "celery_events._transport:Transport"
CELERY_DEFAULT_PREFETCH = 4


def configure_worker(bus: ServiceBus) -> None:
    """Apply the delivery-protecting worker settings to the bus's app (see module doc).

    Raises :class:`ConfigurationError` (after applying the rest) when the user's own
    ``visibility_timeout`` is too short for the bus's handlers.
    """
    conf = bus.app.conf
    sentinel = is_sentinel_url(broker_url_of(bus.app))
    ours = SENTINEL_TRANSPORT if sentinel else TRANSPORT
    if not conf.broker_transport or conf.broker_transport == OLD_TRANSPORT:
        conf.broker_transport = ours
    elif conf.broker_transport != ours:
        log.warning(
            "celery-events: broker_transport is %r, so unreadable items on event queues are not"
            " screened and can stop the worker",
            conf.broker_transport,
        )
    if sentinel and conf.broker_failover_strategy is None:
        conf.broker_failover_strategy = stay_on_sentinels
    options = dict(conf.broker_transport_options or {})
    if options.get("visibility_timeout") is None:
        options["visibility_timeout"] = max(3600.0, needed_visibility_timeout(bus))
        conf.broker_transport_options = options
    if conf.worker_prefetch_multiplier == CELERY_DEFAULT_PREFETCH:
        conf.worker_prefetch_multiplier = 1
    check_visibility_timeout(bus)


def stay_on_sentinels(urls: Sequence[str]) -> Iterator[str]:
    """kombu's fail-over strategy (``broker_failover_strategy``) for a ``sentinel://`` broker.

    A broker URL lists one ``sentinel://`` URL per sentinel, which kombu also takes as
    fail-over alternates: after a connection error it switches to the next one, and
    ``Connection.switch`` takes the transport from that URL's scheme again, dropping
    ``broker_transport`` (kombu 5.7 says so in a comment there), so the worker would consume
    through kombu's own, unscreened Sentinel transport after the first failover. Nothing is
    gained by switching: every connection asks all the sentinels (the channel reads them from
    the URL list, which a switch keeps). So this names the first sentinel's host each time,
    not a URL, and kombu keeps the transport and the rest of the URL's parameters.
    """
    first = str(urls[0]) if urls else ""
    return itertools.repeat(urlsplit(first).hostname or "127.0.0.1")


def check_visibility_timeout(bus: ServiceBus) -> None:
    """Raise :class:`ConfigurationError` if the broker's visibility timeout is too short."""
    conf = bus.app.conf
    current = (conf.broker_transport_options or {}).get("visibility_timeout")
    needed = needed_visibility_timeout(bus)
    if current is not None and float(current) < needed:
        raise ConfigurationError(
            f"broker_transport_options['visibility_timeout'] is {current} s, but a delivery of"
            f" service {bus.service!r} may wait up to {needed:.0f} s (longest retry_backoff_max"
            f" plus handler time limit plus {VISIBILITY_MARGIN:.0f} s). Redis would hand it to"
            f" a second worker meanwhile. Raise visibility_timeout to at least {needed:.0f}, or"
            " lower retry_backoff_max / time_limit."
        )


class RedisRecovery:
    """The Redis backend's recovery: one :class:`Sweeper` per bus while its worker runs."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._sweepers: list[Sweeper] = []

    def process_token(self, key_prefix: str) -> str:
        """This process's token, its alive key kept in the broker's Redis (``liveness.py``)."""
        return keep_alive(self.client, key_prefix)

    def start(self, bus: ServiceBus) -> None:
        sweeper = Sweeper(bus, self.client)
        self._sweepers.append(sweeper)
        sweeper.start()

    def stop(self) -> None:
        for sweeper in self._sweepers:
            sweeper.stop()
        self._sweepers.clear()


class Sweeper:
    """Finds this service's lost deliveries and sends them again (see ``ledger.py``)."""

    def __init__(self, bus: ServiceBus, client: redis.Redis) -> None:
        self.bus = bus
        self.client = client
        self.ledger = Ledger(client, bus.service, bus.settings.key_prefix)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="celery-events-sweeper", daemon=True)
        self._token = uuid.uuid4().hex
        options = bus.app.conf.broker_transport_options or {}
        prefix = options.get("global_keyprefix", "")
        self.unacked_key = prefix + options.get("unacked_key", "unacked")
        self.lock_key = f"{bus.settings.key_prefix}sweeper:{bus.service}"
        self.reaper = Reaper(
            client,
            bus.settings.key_prefix,
            prefix,
            options.get("unacked_key", "unacked"),
            options.get("unacked_index_key", "unacked_index"),
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        interval = self.bus.settings.sweep_interval
        while not self._stop.wait(interval):
            try:
                self.sweep_once()
            except Exception as exc:  # Redis restarting, say; the next round tries again
                log.warning("celery-events: sweep for lost deliveries failed: %s", exc)

    def sweep_once(self) -> int:
        """One round; returns how many lost deliveries were sent again."""
        self.reap_dead_workers()
        client = self.client
        settings = self.bus.settings
        # One sweeper per service at a time; the lock outlives a dead worker by one interval.
        lock_ms = int(settings.sweep_interval * 2000)
        if not client.set(self.lock_key, self._token, nx=True, px=lock_ms):
            if client.get(self.lock_key) != self._token.encode():
                return 0
            client.pexpire(self.lock_key, lock_ms)
        swept = self.ledger.sweep(
            unacked_key=self.unacked_key,
            redelivery_timeout=settings.redelivery_timeout,
            max_redeliveries=settings.max_deliveries,
            postpone=settings.sweep_interval,
        )
        resent = swept.resent
        if resent:
            log.warning(
                "celery-events: sent %d lost delivery(ies) of service %r again",
                resent,
                self.bus.service,
            )
        for entry in swept.given_up:
            self._dead(
                new_letter(
                    service=self.bus.service,
                    reason=Reason.LOST_TOO_OFTEN,
                    error_type="DeliveryLost",
                    error_message=(
                        f"The delivery was lost {entry.get('r')} times (its message vanished"
                        " before a worker finished it) and was given up."
                    ),
                    handler=_text_or_none(entry.get("h")),
                    envelope=_envelope_of(entry.get("m")),
                    queue=_text_or_none(entry.get("q")),
                    raw=str(entry.get("m", "")).encode(),
                )
            )
        for task_id, raw in swept.unreadable:
            self._dead(_unreadable_entry_letter(self.bus.service, task_id, raw))
        return resent

    def _dead(self, letter: DeadLetter) -> None:
        # Stored first: a listener hears of a letter that is kept, and one that raises is
        # logged by the chain, never stops the sweep.
        self.bus.dead_letters.add(letter)
        self.bus.middleware.dead_lettered(letter)

    def reap_dead_workers(self) -> int:
        """Put the unacked messages of dead worker processes back on their queues.

        Every worker's sweeper does this, whatever its service, outside the service's lock:
        the script is atomic, so each message is restored once, and a dead worker's messages
        need not wait for its service's lock to expire. It runs before the lost-delivery sweep,
        which then finds them in their queues rather than held by the dead worker.
        """
        restored = self.reaper.reap()
        if restored:
            log.warning(
                "celery-events: put %d message(s) held by dead worker process(es) back on"
                " their queues",
                restored,
            )
        return restored


def _unreadable_entry_letter(service: str, task_id: str, raw: bytes) -> DeadLetter:
    """The dead letter keeping a ledger entry the sweep could not read, with whatever of the
    delivery can still be read from it (it may be replayed if its envelope and handler can)."""
    try:
        entry = _plainjson.loads(raw)
    except ValueError:
        entry = None
    fields = entry if isinstance(entry, dict) else {}
    return new_letter(
        service=service,
        reason=Reason.UNREADABLE_LEDGER_ENTRY,
        error_type="UnreadableLedgerEntry",
        error_message=(
            f"The lost-delivery ledger entry of task {task_id or '(unknown)'} is not what the"
            " fan-out writes (JSON with string q, m, e, h and a number r), so it could not be"
            " checked or sent again; it was taken out of the ledger and kept here, raw."
        ),
        handler=_text_or_none(fields.get("h")),
        envelope=_envelope_of(fields.get("m")),
        queue=_text_or_none(fields.get("q")),
        task_id=task_id or None,
        raw=raw,
    )


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _envelope_of(payload: object) -> dict[str, Any] | None:
    try:
        message = json.loads(str(payload))
        body = json.loads(base64.b64decode(message["body"]))
        envelope = body[0][0]
    except Exception:
        return None
    return envelope if isinstance(envelope, dict) else None
