"""Opt-in pytest fixtures: add ``pytest_plugins = ["celery_events.testing.pytest_plugin"]``
to your top-level ``conftest.py``. The plugin is never loaded on its own.

- ``capture_events(bus)``: starts capturing what ``bus`` publishes until the test ends and
  returns the :class:`~celery_events.testing.Captured` list.
- ``handler_runner``: a fresh :class:`~celery_events.testing.HandlerRunner` (its own inbox).

>>> def test_placing_an_order_ships_it(capture_events, handler_runner):  # doctest: +SKIP
...     published = capture_events(shop_bus)
...     place_order(7)
...     [run] = handler_runner.run(warehouse_bus, published.named("order.placed")[0])
...     assert run.status == "succeeded"
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

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
def handler_runner() -> HandlerRunner:
    """A :class:`HandlerRunner` with an empty inbox."""
    return HandlerRunner()
