"""Fixtures of the Sentinel tests: the topology (``tests/sentinel_harness.py``) and workers
started on it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery import Celery

from celery_events import EventBus

from ...conftest import WORKER_ARGS
from ...harness import Worker, stop_workers
from ...sentinel_harness import MASTER_NAME, SENTINEL_OPTIONS, SentinelTopology

# The effects list of tests/services/sentinel_orders.py (importing it needs its broker).
EFFECTS_KEY = "test:effects"


@pytest.fixture
def start_sentinel_worker(
    sentinel_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Worker]]:
    """Start `celery -A MODULE worker` subprocesses on the topology; stopped after the test."""
    started: list[Worker] = []

    def start(module: str = "tests.services.sentinel_orders", *, ready: bool = True) -> Worker:
        env = {
            **os.environ,
            "CELERY_EVENTS_TEST_BROKER": sentinel_url,
            "CELERY_EVENTS_TEST_MASTER": MASTER_NAME,
        }
        worker = Worker(module, env, WORKER_ARGS, tmp_path)
        started.append(worker)
        return worker.wait_ready() if ready else worker

    yield start
    stop_workers(started, request)


@pytest.fixture
def make_bus(sentinel_url: str) -> Iterator[Callable[..., EventBus]]:
    """Buses in the test process on the topology (closed after the test)."""
    made: list[EventBus] = []

    def make(service: str = "shop", **settings: object) -> EventBus:
        app = Celery(service, broker=sentinel_url)
        app.conf.broker_transport_options = dict(SENTINEL_OPTIONS)
        bus = EventBus(app, service=service, **settings)  # type: ignore[arg-type]
        made.append(bus)
        return bus

    yield make
    for bus in made:
        bus.close()


def effects(topology: SentinelTopology) -> list[dict[str, object]]:
    """Every effect the handlers committed, read from the current primary."""
    return [json.loads(raw) for raw in topology.primary_client().lrange(EFFECTS_KEY, 0, -1)]
