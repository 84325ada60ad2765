"""A three-node RabbitMQ cluster on loopback ports, for the tests of what survives a node's death.

Each node is a :class:`~tests.harness.RabbitMQServer` (its own node name, AMQP and distribution
ports, data and log directories); the nodes of one cluster share one epmd port and one Erlang
cookie, as nodes of one cluster must. The nodes boot at once; the second and the third then join
the first (``rabbitmqctl stop_app; join_cluster; start_app``), as an operator clusters nodes.

A node killed with ``kill -9`` and started again keeps its data directory, so it comes back as
a member of the cluster, and its quorum queue replicas catch up from the leader.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from .harness import RabbitMQServer, free_port, stop_epmd, wait_until

T = TypeVar("T")


class RabbitMQCluster:
    """``size`` RabbitMQ nodes clustered together; see the module's docstring."""

    def __init__(self, binary: str, size: int = 3) -> None:
        epmd_port = free_port()
        cookie = secrets.token_hex(16).upper()
        self.nodes = [
            RabbitMQServer(binary, epmd_port=epmd_port, cookie=cookie) for _ in range(size)
        ]
        #: How long :meth:`start` took (booting the nodes, then clustering them), in seconds.
        self.boot_seconds = 0.0
        self.cluster_seconds = 0.0

    @property
    def url(self) -> str:
        """The broker URL naming every node (``amqp://...;amqp://...;...``): kombu fails over
        from one to the next."""
        return ";".join(node.url for node in self.nodes)

    def start(self, timeout: float = 90.0) -> None:
        started = time.monotonic()
        for node in self.nodes:
            node.launch()
        _each(lambda node: node.wait_ready(timeout), self.nodes)
        booted = time.monotonic()
        seed = self.nodes[0].nodename

        def join(node: RabbitMQServer) -> None:
            node.ctl("stop_app")
            node.ctl("join_cluster", seed)
            node.ctl("start_app")

        # Each CLI call boots an Erlang VM: the joiners do theirs at once.
        _each(join, self.nodes[1:])
        self.wait_clustered()
        self.boot_seconds = booted - started
        self.cluster_seconds = time.monotonic() - booted

    def running_nodes(self, via: RabbitMQServer | None = None) -> set[str]:
        """The node names ``via`` (default: the first live node) sees running in the cluster."""
        node = via or self.live()[0]
        status = json.loads(node.ctl("cluster_status", "--formatter", "json"))
        return set(status["running_nodes"])

    def wait_clustered(self, timeout: float = 60.0) -> None:
        """Wait until the first live node sees every live node running in its cluster."""
        want = {node.nodename for node in self.live()}

        def clustered() -> bool:
            return self.running_nodes() == want

        wait_until(clustered, timeout=timeout, interval=0.5, what=f"the cluster {sorted(want)}")

    def live(self) -> list[RabbitMQServer]:
        return [node for node in self.nodes if node.process is not None]

    def node(self, nodename: str) -> RabbitMQServer:
        return next(node for node in self.nodes if node.nodename == nodename)

    def queues(self) -> dict[str, dict[str, object]]:
        """Every queue of the default vhost: name -> type, leader, members, messages."""
        rows = json.loads(
            self.live()[0].ctl(
                "list_queues", "name", "type", "leader", "members", "messages",
                "--formatter", "json", "--quiet",
            )
        )
        return {str(row["name"]): row for row in rows}

    def messages(self, vhost: str = "/") -> dict[str, int]:
        """Every queue of ``vhost``: name -> messages (ready and unacknowledged)."""
        return self.live()[0].messages(vhost)

    def leader(self, queue: str) -> RabbitMQServer:
        """The node that leads quorum queue ``queue``."""
        row = self.queues().get(queue)
        if row is None or row.get("type") != "quorum":
            raise AssertionError(f"{queue!r} is not a quorum queue of the cluster: {row}")
        return self.node(str(row["leader"]))

    def kill(self, node: RabbitMQServer) -> None:
        """`kill -9` one node."""
        node.kill()

    def restart(self, node: RabbitMQServer, timeout: float = 60.0) -> float:
        """Start a killed node again and wait until it is back in the cluster; the seconds it
        took."""
        started = time.monotonic()
        node.launch()
        node.wait_ready(timeout)
        self.wait_clustered(timeout)
        return time.monotonic() - started

    def stop(self) -> None:
        _each(lambda node: node.stop(), self.nodes)
        stop_epmd(self.nodes[0].env)

    def logs(self) -> str:
        return "\n".join(
            f"----- log of RabbitMQ node {node.nodename} -----\n{node.log()[-10000:]}"
            for node in self.nodes
            if (node.dir / "server.log").exists()
        )


def _each(action: Callable[[RabbitMQServer], None], nodes: list[RabbitMQServer]) -> None:
    """Run ``action`` on every node at once; re-raise the first failure."""
    errors: list[BaseException] = []

    def run(node: RabbitMQServer) -> None:
        try:
            action(node)
        except BaseException as error:  # re-raised below, in the caller's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def cluster(binary: str) -> Iterator[RabbitMQCluster]:
    """A started three-node cluster, stopped (its data removed) afterwards."""
    nodes = RabbitMQCluster(binary)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()
