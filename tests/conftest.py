"""Fixtures shared by every test: a real Redis and real worker processes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

# The official AsyncAPI 3.0.0 JSON Schema (installed with npm into .test-cache/ once).
from .asyncapi_schema import asyncapi_schema  # noqa: F401
from .django.postgres import PostgresServer, postgres_bin_dir
from .harness import (
    RabbitMQServer,
    RedisServer,
    Worker,
    installed,
    rabbitmq_binary_or_skip,
    redis_server_binary,
    stop_workers,
)
from .rabbitmq_cluster import RabbitMQCluster, cluster
from .rabbitmq_managed import ManagedNode

# The Sentinel topology's fixtures (sentinel_topology, sentinel_url), for every test.
from .sentinel_harness import sentinel_topology, sentinel_url  # noqa: F401

# Fast-starting workers: mingle and gossip only slow start-up, they change nothing we test.
WORKER_ARGS = ["--without-mingle", "--without-gossip", "-c", "1"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the whole run. Missing Redis fails in CI, skips locally."""
    binary = installed(redis_server_binary(), "redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(binary)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[RabbitMQServer]:
    """A private RabbitMQ node, started (a few seconds) only for the tests that ask for it.
    Missing RabbitMQ fails in CI, skips locally."""
    binary = rabbitmq_binary_or_skip()
    server = RabbitMQServer(binary)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _managed_rabbitmq_node() -> Iterator[ManagedNode]:
    binary = rabbitmq_binary_or_skip()
    node = ManagedNode.start(binary)
    yield node
    node.stop()


@pytest.fixture
def managed_rabbitmq(_managed_rabbitmq_node: ManagedNode) -> ManagedNode:
    """A private RabbitMQ node with the management plugin (tests/rabbitmq_managed.py), one for
    the session, emptied of every queue and exchange earlier tests declared. Missing RabbitMQ
    fails in CI, skips locally."""
    _managed_rabbitmq_node.empty()
    return _managed_rabbitmq_node


@pytest.fixture(scope="session")
def rabbitmq_cluster() -> Iterator[RabbitMQCluster]:
    """Three private RabbitMQ nodes clustered together (tests/rabbitmq_cluster.py), started
    for the tests that ask for it. Missing RabbitMQ fails in CI, skips locally."""
    binary = rabbitmq_binary_or_skip()
    yield from cluster(binary)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL server. Missing PostgreSQL fails in CI, skips locally."""
    bin_dir = installed(postgres_bin_dir(), "PostgreSQL is not installed (apt-get install postgresql)")
    server = PostgresServer(bin_dir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test Redis, emptied, and named in the environment the test services read."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    redis_server.client().flushall()
    monkeypatch.setenv("CELERY_EVENTS_TEST_BROKER", redis_server.url)
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def start_worker(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Worker]]:
    """Start `celery -A MODULE worker` subprocesses; every one is stopped after the test."""
    started: list[Worker] = []

    def start(
        module: str, *, env: dict[str, str] | None = None, args: list[str] | None = None,
        ready: bool = True,
    ) -> Worker:
        full_env = {**os.environ, "CELERY_EVENTS_TEST_BROKER": redis_url, **(env or {})}
        worker = Worker(module, full_env, [*WORKER_ARGS, *(args or [])], tmp_path)
        started.append(worker)
        return worker.wait_ready() if ready else worker

    yield start
    stop_workers(started, request)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts or "faults" in item.path.parts:
            item.add_marker(pytest.mark.integration)
        for server in servers_of(item):
            item.add_marker(server)


def servers_of(item: pytest.Item) -> list[str]:
    """The server groups a test needs besides Redis (markers ``rabbitmq``, ``sentinel``,
    ``postgres``): `make test` runs the groups in parallel pytest processes."""
    if "unit" in item.path.parts:
        return []
    fixtures = set(getattr(item, "fixturenames", ()))
    callspec = getattr(item, "callspec", None)
    # Parametrized over brokers or backends: the id names the server ("[rabbitmq-quorum]").
    ids = callspec.id.lower() if callspec is not None else ""
    found = []
    if (
        fixtures & {"rabbitmq_server", "rabbitmq_cluster", "managed_rabbitmq"}
        or "amqp" in item.path.parts
        or "rabbitmq" in ids
    ):
        found.append("rabbitmq")
    if "sentinel" in item.path.parts or "sentinel" in ids or any(
        name.startswith("sentinel") for name in fixtures
    ):
        found.append("sentinel")
    if "django" in item.path.parts or "postgres_server" in fixtures:
        found.append("postgres")
    return found
