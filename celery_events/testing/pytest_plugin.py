"""Opt-in pytest fixtures: add ``pytest_plugins = ["celery_events.testing.pytest_plugin"]``
to your top-level ``conftest.py``. The plugin is never loaded on its own.

- ``capture_events(bus)``: starts capturing what ``bus`` publishes until the test ends and
  returns the :class:`~celery_events.testing.Captured` list.
- ``handler_runner``: a fresh :class:`~celery_events.testing.HandlerRunner`; after the test
  the memory backend is emptied (its queues, registry, inboxes and dead letters), so no
  delivery or record leaks into the next test.

Services under test use the memory backend: ``Celery(..., broker="memory://")`` (with Django,
``CELERY_BROKER_URL = "memory://"`` in the test settings).

>>> from celery import Celery
>>> from celery_events import EventBus
>>> shop_bus = EventBus(Celery("shop", broker="memory://"), service="shop")
>>> warehouse_bus = EventBus(Celery("warehouse", broker="memory://"), service="warehouse")
>>> @warehouse_bus.subscribe("order.placed")
... def ship(event): ...
>>> def place_order(order_id):
...     shop_bus.publish("order.placed", {"order_id": order_id})
>>> def test_placing_an_order_ships_it(handler_runner):
...     warehouse_bus.register()            # as its worker does when it starts
...     place_order(7)                      # publishes order.placed on memory://
...     [run] = handler_runner.work(warehouse_bus)
...     assert (run.handler, run.status) == ("warehouse.ship", "succeeded")

pytest gives the test its ``handler_runner``; called by hand, it is a fresh
:class:`~celery_events.testing.HandlerRunner`:

>>> from celery_events.testing import HandlerRunner
>>> test_placing_an_order_ships_it(HandlerRunner())
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from ..backends import memory
from ..bus import EventBus
from . import Captured, HandlerRunner, capture_published


@pytest.fixture
def capture_events() -> Iterator[Callable[[EventBus], Captured]]:
    """Capture what a bus publishes, from the call until the end of the test."""
    with ExitStack() as stack:

        def start(bus: EventBus) -> Captured:
            return stack.enter_context(capture_published(bus))

        yield start


@pytest.fixture
def handler_runner() -> Iterator[HandlerRunner]:
    """A :class:`HandlerRunner`; the memory backend is emptied after the test."""
    yield HandlerRunner()
    memory.reset()
