"""Fixtures of the documentation's samples: PostgreSQL, and RabbitMQ with its management plugin.

The RabbitMQ servers of the docs have the management plugin on (``celery eventbus status``
reads in-flight counts from it), on a loopback port of their own that the samples write as
``http://guest:guest@localhost:15672`` (one node) and ``rabbit1:15672`` .. ``rabbit3:15672``
(the cluster), with statistics refreshed every 0.5 s (5 s by default) so that a page waits less.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

# Resolved here, once: the cluster's nodes are waited for in threads, each importing
# kombu.Connection, and kombu's lazy attributes may fail to resolve in two threads at once.
from kombu import Connection  # noqa: F401

from ..harness import RabbitMQServer, free_port, rabbitmq_server_binary, wait_until
from ..rabbitmq_cluster import RabbitMQCluster

DOCS_TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # `make test` runs the documentation's tests in a group of their own choosing (marker docs).
    for item in items:
        if item.path.is_relative_to(DOCS_TESTS):
            item.add_marker(pytest.mark.docs)


def _rabbitmq_binary() -> str:
    binary = rabbitmq_server_binary()
    if binary is None:
        message = "rabbitmq-server is not installed (apt-get install rabbitmq-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _managed(binary: str, port: int, **kwargs: object) -> RabbitMQServer:
    return RabbitMQServer(
        binary,
        plugins=["rabbitmq_management"],
        config=[
            f"management.tcp.port = {port}",
            "management.tcp.ip = 127.0.0.1",
            "collect_statistics_interval = 500",
        ],
        **kwargs,  # type: ignore[arg-type]
    )


class ManagedNode:
    """A RabbitMQ node and the port of its management API."""

    def __init__(self, server: RabbitMQServer, management_port: int) -> None:
        self.server = server
        self.management_port = management_port

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def management_url(self) -> str:
        return f"http://guest:guest@127.0.0.1:{self.management_port}"

    def _api(self, method: str, path: str) -> object:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.management_port}/api/{path}", method=method,
            headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def empty(self) -> None:
        """Delete every queue and every exchange but the broker's own (``amq.*`` and the
        default), so that a test sees only what it declares, as on a fresh node."""
        vhost = urllib.parse.quote("/", safe="")
        for queue in self._api("GET", f"queues/{vhost}") or []:  # type: ignore[union-attr]
            self._api("DELETE", f"queues/{vhost}/{urllib.parse.quote(queue['name'], safe='')}")
        for exchange in self._api("GET", f"exchanges/{vhost}") or []:  # type: ignore[union-attr]
            name = exchange["name"]
            if name and not name.startswith("amq."):
                self._api("DELETE", f"exchanges/{vhost}/{urllib.parse.quote(name, safe='')}")


@pytest.fixture(scope="session")
def docs_rabbitmq_node() -> Iterator[ManagedNode]:
    """A private RabbitMQ node with the management plugin, for the whole session. Missing
    RabbitMQ fails in CI, skips locally."""
    binary = _rabbitmq_binary()
    port = free_port()
    server = _managed(binary, port)
    server.start()
    try:
        wait_until(lambda: _listening(port), timeout=30, what="the management API")
        yield ManagedNode(server, port)
    finally:
        server.stop()


@pytest.fixture
def docs_rabbitmq_server(docs_rabbitmq_node: ManagedNode) -> ManagedNode:
    """The session's managed node, emptied of what earlier tests declared (a page's listing of
    queues shows only its own, as ``redis_url`` is an emptied Redis)."""
    docs_rabbitmq_node.empty()
    return docs_rabbitmq_node


class ManagedCluster(RabbitMQCluster):
    """Three clustered nodes (tests/rabbitmq_cluster.py), each with the management plugin."""

    def __init__(self, binary: str, size: int = 3) -> None:
        epmd_port = free_port()
        cookie = secrets.token_hex(16).upper()
        self.management_ports = [free_port() for _ in range(size)]
        self.nodes = [
            _managed(binary, port, epmd_port=epmd_port, cookie=cookie)
            for port in self.management_ports
        ]
        self.boot_seconds = 0.0
        self.cluster_seconds = 0.0


@pytest.fixture(scope="session")
def docs_rabbitmq_cluster() -> Iterator[ManagedCluster]:
    """A started three-node cluster with the management plugin, stopped afterwards."""
    nodes = ManagedCluster(_rabbitmq_binary())
    try:
        nodes.start()
        for port in nodes.management_ports:
            wait_until(lambda port=port: _listening(port), timeout=30, what="the management API")
        yield nodes
    finally:
        nodes.stop()
