"""RabbitMQ nodes with the management plugin, for the tests that read the management API
(``celery eventbus status`` on RabbitMQ, the documentation's samples).

The plugin listens on a loopback port of its own, with statistics refreshed every 0.5 s (5 s by
default) so that a test waits less for them. ``managed_rabbitmq`` (tests/conftest.py) is one such
node for the whole session, emptied before each test that asks for it.
"""

from __future__ import annotations

import base64
import json
import socket
import urllib.parse
import urllib.request
from dataclasses import dataclass

from .harness import RabbitMQServer, free_port, wait_until

__all__ = ["ManagedNode", "managed_server", "wait_for_management"]


def managed_server(binary: str, management_port: int, **kwargs: object) -> RabbitMQServer:
    """A node (not started) whose management API will listen on ``management_port``."""
    return RabbitMQServer(
        binary,
        plugins=["rabbitmq_management"],
        config=[
            f"management.tcp.port = {management_port}",
            "management.tcp.ip = 127.0.0.1",
            "collect_statistics_interval = 500",
        ],
        **kwargs,  # type: ignore[arg-type]
    )


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_for_management(port: int) -> None:
    """Wait for a started node's management API (it opens a moment after AMQP)."""
    wait_until(lambda: _listening(port), timeout=30, what="the management API")


@dataclass
class ManagedNode:
    """A node with the management plugin, and the port of its API."""

    server: RabbitMQServer
    management_port: int

    @classmethod
    def start(cls, binary: str) -> ManagedNode:
        """Start a node with the plugin; returns once both AMQP and the API answer."""
        port = free_port()
        server = managed_server(binary, port)
        server.start()
        try:
            wait_for_management(port)
        except BaseException:
            server.stop()
            raise
        return cls(server, port)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def management_url(self) -> str:
        return f"http://guest:guest@127.0.0.1:{self.management_port}"

    def empty(self) -> None:
        """Delete every queue and every exchange but the broker's own (``amq.*`` and the
        default), so that a test sees only what it declares, as on a fresh node."""
        vhost = urllib.parse.quote("/", safe="")
        for queue in self._api("GET", f"queues/{vhost}"):
            self._api("DELETE", f"queues/{vhost}/{urllib.parse.quote(queue['name'], safe='')}")
        for exchange in self._api("GET", f"exchanges/{vhost}"):
            name = exchange["name"]
            if name and not name.startswith("amq."):
                self._api("DELETE", f"exchanges/{vhost}/{urllib.parse.quote(name, safe='')}")

    def stop(self) -> None:
        self.server.stop()

    def _api(self, method: str, path: str) -> list[dict[str, str]]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.management_port}/api/{path}", method=method,
            headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else []  # type: ignore[no-any-return]
