"""What a service's ``celery worker`` does for its bus before it starts consuming."""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

log = logging.getLogger(__name__)


def _on_worker_setup(sender: str, instance: Any, **kwargs: Any) -> None:
    from .bus import _BUSES

    bus = _BUSES.get(instance.app)
    if bus is None:
        return
    # Consume the service's event queues in addition to whatever the worker was told to
    # consume, so that plain `celery -A svc worker` receives deliveries.
    queues = instance.app.amqp.queues
    for queue in bus.queues:
        queues.select_add(queue)
    if bus.settings.register_on_worker_start:
        subscriptions = bus.register()
        log.info(
            "celery-events: service %r consumes %s with %d subscription(s)",
            bus.service,
            ", ".join(bus.queues) or "no event queue",
            len(subscriptions),
        )


signals.celeryd_after_setup.connect(_on_worker_setup, weak=False)
