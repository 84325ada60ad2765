"""Django for the tests under tests/django: configured in-process, PostgreSQL on a free port.

Django is configured with ``settings.configure`` rather than DJANGO_SETTINGS_MODULE so that no
environment variable leaks into the worker subprocesses of other tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import django
import pytest
from django.conf import settings

from ..harness import RedisServer, Worker
from . import settings as test_settings
from .postgres import PostgresServer

if not settings.configured:
    settings.configure(**{k: getattr(test_settings, k) for k in dir(test_settings) if k.isupper()})
    django.setup()

SETTINGS_MODULE = "tests.django.settings"
BOTH = ["default", "pg"]


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix: None, postgres_server: PostgresServer
) -> None:
    settings.DATABASES["pg"]["PORT"] = str(postgres_server.port)


@pytest.fixture(scope="session")
def django_bus_broker(redis_server: RedisServer) -> Iterator[str]:
    """Point the project's Celery app at the test Redis before its bus first connects."""
    from celery_events.contrib.django import get_bus

    from .proj.celery import app

    app.conf.broker_url = redis_server.url
    yield redis_server.url
    get_bus().close()


@pytest.fixture
def bus(django_bus_broker: str, redis_url: str) -> Any:
    """The project's bus, its subscriptions recorded in the (emptied) test Redis."""
    from celery_events.contrib.django import get_bus

    project_bus = get_bus()
    project_bus.register()
    project_bus.registry.refresh()
    return project_bus


@pytest.fixture
def start_django_worker(
    start_worker: Callable[..., Worker], postgres_server: PostgresServer
) -> Callable[..., Worker]:
    """`celery -A tests.django.proj worker` against the PostgreSQL test database."""

    def start(*, env: dict[str, str] | None = None, ready: bool = True) -> Worker:
        from django.db import connections

        full_env = {
            "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
            "CELERY_EVENTS_TEST_PG_PORT": str(postgres_server.port),
            "CELERY_EVENTS_TEST_PG_NAME": connections["pg"].settings_dict["NAME"],
            "CELERY_EVENTS_TEST_DATABASE": "pg",
            **(env or {}),
        }
        return start_worker("tests.django.proj", env=full_env, ready=ready)

    return start


@pytest.fixture
def manage_env(postgres_server: PostgresServer, redis_url: str) -> dict[str, str]:
    """The environment of a `python -m django ...` subprocess of the test project."""
    from django.db import connections

    return dict(
        os.environ,
        DJANGO_SETTINGS_MODULE=SETTINGS_MODULE,
        CELERY_EVENTS_TEST_BROKER=redis_url,
        CELERY_EVENTS_TEST_PG_PORT=str(postgres_server.port),
        CELERY_EVENTS_TEST_PG_NAME=connections["pg"].settings_dict["NAME"],
        CELERY_EVENTS_TEST_DATABASE="pg",
        CELERY_EVENTS_TEST_OUTBOX="1",
    )
