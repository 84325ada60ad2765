"""The contract suite on Redis Sentinel: the Redis harness's real workers, on the primary a
Sentinel topology (``tests/sentinel_harness.py``) names, through ``sentinel://``."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_events import EventBus

from ..harness import Worker
from ..sentinel_harness import MASTER_NAME, SENTINEL_OPTIONS, SentinelTopology
from .harness import WORKER_ARGS, BackendHarness, RedisHarness
from .services import RedisBoard, build_service


class SentinelHarness(RedisHarness):
    """One primary, one replica, three sentinels; the services' apps on ``sentinel://`` with
    ``master_name``, so every role (fan-out, ledger, sweeper, reaper, inbox, dead letters,
    registry) goes through the Sentinel client. The handlers' board is on the primary itself,
    where ``bus.redis_effects()`` writes commit with the inbox."""

    name = "sentinel"

    @classmethod
    def open(cls, request: pytest.FixtureRequest) -> SentinelHarness:
        topology: SentinelTopology = request.getfixturevalue("sentinel_topology")
        topology.restore()
        logs = request.getfixturevalue("tmp_path_factory").mktemp("contract-logs")
        return cls(topology, Path(logs))

    def __init__(self, topology: SentinelTopology, log_dir: Path) -> None:  # noqa: D107
        BackendHarness.__init__(self)
        self.topology = topology
        self.url = topology.url
        self.board_url = topology.primary().url
        self.log_dir = log_dir
        self.prefix = f"contract-{self.token}:"
        self.client = topology.primary_client()
        self.client.flushall()
        self._board = RedisBoard(self.board_url, f"{self.prefix}board:")
        self.workers: dict[str, Worker] = {}

    def _app(self, name: str) -> Celery:
        app = Celery(name, broker=self.url)
        app.conf.broker_transport_options = dict(SENTINEL_OPTIONS)
        return app

    def make_bus(self, service: str) -> EventBus:
        return EventBus(self._app(f"{service}-{self.token}"), service=service, **self._settings())

    def _register(self, service: str) -> None:
        deploy = build_service(
            self._app(f"{service}-deploy-{uuid.uuid4().hex[:6]}"), service, self.board,
            **self._settings(),
        )
        try:
            deploy.register()
        finally:
            deploy.close()

    def _start(self, service: str) -> None:
        if service in self.workers:
            return
        env: dict[str, Any] = {
            **os.environ,
            "CELERY_EVENTS_TEST_BROKER": self.url,
            "CELERY_EVENTS_TEST_MASTER": MASTER_NAME,
            "CONTRACT_BOARD_URL": self.board_url,
            "CONTRACT_SERVICE": service,
            "CONTRACT_KEY_PREFIX": self.prefix,
        }
        worker = Worker("tests.services.contract", env, WORKER_ARGS, self.log_dir)
        self.workers[service] = worker
        worker.wait_ready()
