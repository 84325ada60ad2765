"""Fixtures of the documentation's samples: RabbitMQ nodes with their management plugin.

The RabbitMQ servers of the docs have the management plugin on (``celery eventbus status``
reads in-flight counts from it; tests/rabbitmq_managed.py), on a loopback port of their own that
the samples write as ``http://guest:guest@localhost:15672`` (one node: ``managed_rabbitmq`` of
tests/conftest.py) and ``rabbit1:15672`` .. ``rabbit3:15672`` (the cluster here), with
statistics refreshed every 0.5 s (5 s by default) so that a page waits less.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

# Resolved here, once: the cluster's nodes are waited for in threads, each importing
# kombu.Connection, and kombu's lazy attributes may fail to resolve in two threads at once.
from kombu import Connection  # noqa: F401

from ..harness import free_port, rabbitmq_binary_or_skip
from ..rabbitmq_cluster import RabbitMQCluster
from ..rabbitmq_managed import managed_server, wait_for_management

DOCS_TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # `make test` runs the documentation's tests in a group of their own choosing (marker docs).
    for item in items:
        if item.path.is_relative_to(DOCS_TESTS):
            item.add_marker(pytest.mark.docs)


class ManagedCluster(RabbitMQCluster):
    """Three clustered nodes (tests/rabbitmq_cluster.py), each with the management plugin."""

    def __init__(self, binary: str, size: int = 3) -> None:
        epmd_port = free_port()
        cookie = secrets.token_hex(16).upper()
        self.management_ports = [free_port() for _ in range(size)]
        self.nodes = [
            managed_server(binary, port, epmd_port=epmd_port, cookie=cookie)
            for port in self.management_ports
        ]
        self.boot_seconds = 0.0
        self.cluster_seconds = 0.0


@pytest.fixture(scope="session")
def docs_rabbitmq_cluster() -> Iterator[ManagedCluster]:
    """A started three-node cluster with the management plugin, stopped afterwards."""
    nodes = ManagedCluster(rabbitmq_binary_or_skip())
    try:
        nodes.start()
        for port in nodes.management_ports:
            wait_for_management(port)
        yield nodes
    finally:
        nodes.stop()
