"""The Django project's bus: made once from ``CELERY_EVENTS``, publishing on commit."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from functools import partial
from typing import Any

from celery import Celery
from django.db import transaction
from django.utils.module_loading import import_string

from ...bus import EventBus, PublishResult
from ...envelope import Event, ExtensionValue, encode_data
from ...errors import ConfigurationError, NoSubscribersError, PublishError, RegistryError, describe
from .conf import read_config

__all__ = ["DjangoEventBus", "get_bus"]

_bus: DjangoEventBus | None = None
_lock = threading.Lock()


class DjangoEventBus(EventBus):
    """An :class:`~celery_events.EventBus` that respects Django's database transactions.

    - ``publish()`` inside ``transaction.atomic()`` sends the event after the transaction
      commits, and not at all if it rolls back; it returns a :class:`PublishResult` with
      ``deferred=True``, the final event (id included) and no deliveries yet. Outside a
      transaction it sends at once, like the plain bus.
    - With ``CELERY_EVENTS["outbox"] = True``, ``publish()`` writes the event to the outbox
      table in the caller's transaction instead, and a relay sends it (see ``outbox.py``).
    - ``@bus.subscribe(..., atomic=True)`` handlers run in a transaction that records the
      delivery in the inbox table (see ``inbox.py``).

    Made by :func:`get_bus` from the ``CELERY_EVENTS`` setting; you do not create it yourself.
    """

    def __init__(self, app: Celery, service: str, **settings: Any) -> None:
        super().__init__(app, service, **settings)
        from .inbox import run_atomic

        self.transaction_runner = run_atomic

    def publish(
        self,
        name: str,
        data: dict[str, Any] | None = None,
        *,
        require_subscribers: bool | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        extensions: Mapping[str, ExtensionValue] | None = None,
        subject: str | None = None,
        dataschema: str | None = None,
    ) -> PublishResult:
        """Publish ``name`` with ``data``, after the current transaction commits.

        See :meth:`EventBus.publish` for the arguments and errors. In a transaction, or with
        the outbox, ``require_subscribers`` is checked now (it reads the registry) and the
        result has ``deferred=True``. A send after commit that fails raises
        :class:`PublishError` from the ``atomic`` block's exit, with the data committed: use
        the outbox where an event must never be lost that way.

        >>> with transaction.atomic():                                # doctest: +SKIP
        ...     order = Order.objects.create(...)
        ...     bus.publish("order.placed", {"order_id": order.pk}).deferred
        True
        """
        config = read_config()
        event = self.new_event(
            name,
            data,
            correlation_id=correlation_id,
            causation_id=causation_id,
            extensions=extensions,
            subject=subject,
            dataschema=dataschema,
        )
        must_have_subscribers = (
            self.settings.require_subscribers
            if require_subscribers is None
            else require_subscribers
        )
        if config.outbox:
            if must_have_subscribers:
                self._check_subscribers(event)
            self._write_outbox(event, config.database)
            return PublishResult(event, deferred=True)
        if not transaction.get_connection(config.database).in_atomic_block:
            return self.publish_event(event, require_subscribers=require_subscribers)
        if must_have_subscribers:
            self._check_subscribers(event)
        transaction.on_commit(
            partial(self.publish_event, event, require_subscribers=False),
            using=config.database,
        )
        return PublishResult(event, deferred=True)

    def _write_outbox(self, event: Event, using: str) -> None:
        from .models import OutboxEvent

        data_json = encode_data(
            event.name, event.data, self.settings.max_event_size, self.settings.max_event_depth
        )
        OutboxEvent.from_event(event, data_json).save(using=using, force_insert=True)

    def _check_subscribers(self, event: Event) -> None:
        try:
            found = self.registry.match(event.name)
        except RegistryError as exc:
            raise PublishError(f"Could not publish {event.name!r}: {exc}") from exc
        if not found:
            raise NoSubscribersError(
                f"No service subscribes to {event.name!r}, so the event was not recorded."
                " Start a subscriber (or run its register command) first, or publish without"
                " require_subscribers."
            )


def get_bus() -> DjangoEventBus:
    """Return the project's bus, making it on first call from ``settings.CELERY_EVENTS``.

    ``CELERY_EVENTS["app"]`` names the Celery app (``"proj.celery.app"``) and
    ``CELERY_EVENTS["service"]`` the service; other bus settings come from the same dict.

    >>> from celery_events.contrib.django import get_bus
    >>> get_bus().publish("order.placed", {"order_id": 7})           # doctest: +SKIP
    """
    global _bus
    if _bus is not None:
        return _bus
    with _lock:
        if _bus is None:
            config = read_config()
            try:
                app = import_string(config.app.replace(":", "."))
            except ImportError as exc:
                raise ConfigurationError(
                    f"CELERY_EVENTS['app'] is {config.app!r}, which cannot be imported: {describe(exc)}."
                    " Name your Celery app's module and variable, such as 'proj.celery.app'."
                ) from exc
            if not isinstance(app, Celery):
                raise ConfigurationError(
                    f"CELERY_EVENTS['app'] is {config.app!r}, which is a"
                    f" {type(app).__name__}, not a Celery app."
                )
            _bus = DjangoEventBus(app, config.service, **dict(config.bus_settings))
            from . import outbox

            outbox.connect_worker_relay(_bus)
    return _bus
