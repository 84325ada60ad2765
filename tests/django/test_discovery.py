"""Handlers in `subscribers.py` of installed apps are found at start-up, errors never hidden."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from celery_events import EventBus
from celery_events.contrib.django import get_bus
from celery_events.contrib.django.discovery import autodiscover

from ..harness import ROOT, Worker, wait_until


def test_django_setup_imported_every_subscribers_module() -> None:
    # Given the test project, set up by conftest.py with django.setup()
    # Then the warehouse app's handlers are on the project's bus
    assert [h.task_name for h in get_bus().handlers] == [
        "warehouse.ship", "warehouse.count_orders",
    ]
    # And apps without a subscribers module are skipped
    assert autodiscover() == ["tests.django.warehouse.subscribers"]


def test_the_bus_is_made_once_from_the_setting() -> None:
    from celery_events.contrib.django import bus

    from .proj.celery import app

    assert bus == get_bus() and bus.app is app and bus.service == "warehouse"
    assert bus.settings.publish_timeout == 1.0
    assert isinstance(bus, EventBus) and repr(bus) == repr(get_bus())


def test_an_import_error_inside_a_subscribers_module_stops_django_setup() -> None:
    # Given an installed app whose subscribers.py imports a missing module
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.django.settings_broken")
    # When Django starts
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    # Then it fails with that ImportError instead of running without the handlers
    assert done.returncode != 0
    assert "ModuleNotFoundError: No module named 'celery_events_no_such_module'" in done.stderr
    assert "brokenapp/subscribers.py" in done.stderr


def test_an_import_error_inside_a_subscribers_module_stops_the_worker(
    start_django_worker: Callable[..., Worker],
) -> None:
    worker = start_django_worker(
        env={"DJANGO_SETTINGS_MODULE": "tests.django.settings_broken"}, ready=False
    )
    wait_until(lambda: worker.process.poll() is not None, timeout=60, what="worker exit")
    assert worker.process.returncode != 0
    assert "No module named 'celery_events_no_such_module'" in worker.log()
    assert " ready." not in worker.log()


def test_a_view_using_the_bus_imported_at_the_top_of_its_module_publishes(bus: EventBus) -> None:
    from django.test import Client

    # tests/django/warehouse/views.py: `from celery_events.contrib.django import bus`
    response = Client(SERVER_NAME="localhost").get("/orders/", {"order_id": 7})
    assert response.status_code == 200, response.content
    assert response.json() == {"deferred": False, "handlers": ["warehouse.count_orders", "warehouse.ship"]}
