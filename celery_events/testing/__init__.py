"""Helpers for testing your own services without a broker.

- :func:`capture_published` records what a bus would publish, and sends nothing.
- :class:`HandlerRunner` runs the handlers that match an event in-process, making the worker's
  decisions: the envelope's JSON round trip, the inbox (a handled delivery is skipped when it
  comes again), ``atomic=True`` handlers through the bus's transaction runner, and the retry or
  dead-letter decision after a failure, with the delay the worker would wait. Retries run at
  once. It is not Celery's eager mode: no task is called and no broker is needed.
- ``pytest_plugins = ["celery_events.testing.pytest_plugin"]`` gives the fixtures
  ``capture_events`` and ``handler_runner`` (the plugin is never loaded on its own).

>>> from celery_events.testing import HandlerRunner, capture_published
>>> with capture_published(shop_bus) as published:                  # doctest: +SKIP
...     place_order(7)
>>> [e.name for e in published]                                      # doctest: +SKIP
['order.placed']
>>> runs = HandlerRunner().run(warehouse_bus, published[0])           # doctest: +SKIP
>>> [(r.handler, r.status) for r in runs]                            # doctest: +SKIP
[('warehouse.ship', 'succeeded')]
"""

from ._capture import Captured, capture_published
from ._runner import HandlerRun, HandlerRunner

__all__ = ["capture_published", "Captured", "HandlerRunner", "HandlerRun"]
