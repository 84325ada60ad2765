"""Helpers for testing your own services without a broker server or a worker process.

Services under test use the memory backend, ``Celery(..., broker="memory://")``: publishes go
to kombu's in-process queues, and the registry, inboxes and dead letters are dicts in this
process.

- :func:`capture_published` records what a bus would publish, and sends nothing.
- :class:`HandlerRunner` is the worker, in the test process: it takes deliveries off a bus's
  queues and runs each through Celery's task tracer and the bus's real delivery task, so the
  worker's decisions are made as on a worker: the envelope's JSON, the inbox (a handled
  delivery is skipped when it comes again), ``atomic=True`` handlers through the Django
  database inbox, retries (Celery's own retry messages, run at once, the waits recorded) and
  dead letters in ``bus.dead_letters``; the bus's handle scopes wrap each call (a Flask app
  context, a Django transaction), while its publish scopes do not see the deliveries (they
  arrive, the subscriber does not publish them). ``run(bus, event)`` delivers one event to
  the bus's matching handlers; ``work(bus)`` runs whatever was published to it.
- ``pytest_plugins = ["celery_events.testing.pytest_plugin"]`` gives the fixtures
  ``capture_events`` and ``handler_runner`` (the plugin is never loaded on its own).

>>> from celery import Celery
>>> from celery_events import EventBus
>>> from celery_events.testing import HandlerRunner, capture_published
>>> shop_bus = EventBus(Celery("shop", broker="memory://"), service="shop")
>>> warehouse_bus = EventBus(Celery("warehouse", broker="memory://"), service="warehouse")
>>> @warehouse_bus.subscribe("order.placed")
... def ship(event): ...
>>> def place_order(order_id):            # the shop's code under test
...     shop_bus.publish("order.placed", {"order_id": order_id})
>>> with capture_published(shop_bus) as published:
...     place_order(7)
>>> [e.name for e in published]
['order.placed']
>>> runs = HandlerRunner().run(warehouse_bus, published[0])
>>> [(r.handler, r.status) for r in runs]
[('warehouse.ship', 'succeeded')]
"""

from ._capture import Captured, capture_published
from ._runner import HandlerRun, HandlerRunner

__all__ = ["capture_published", "Captured", "HandlerRunner", "HandlerRun"]
