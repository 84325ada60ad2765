"""A Redis Sentinel topology on loopback ports: one primary, its replicas, three sentinels.

Everything is real: ``redis-server`` processes (the replicas started with ``--replicaof``) and
three ``redis-server --sentinel`` processes (Debian's ``redis-sentinel`` is the same binary)
watching the primary as ``mymaster`` with a quorum of 2. Down-after is 1 s and the failover
timeout short, so a killed primary is replaced in a few seconds.

Fixtures (import them into a ``conftest.py``, as ``tests/integration/sentinel/conftest.py``
does):

- ``sentinel_topology``: the session's topology (one replica), restored to full strength
  before each test that asks for it (a killed node restarted as a replica, every node back);
- ``sentinel_url``: its broker URL, kombu's ``sentinel://...;sentinel://...`` form, with the
  topology's data emptied; ``SENTINEL_OPTIONS`` are the transport options that go with it.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from .harness import RedisServer, free_port, installed, redis_server_binary, wait_until

MASTER_NAME = "mymaster"
#: The transport options that go with a topology's broker URL (kombu reads master_name).
SENTINEL_OPTIONS = {"master_name": MASTER_NAME}
#: How long a sentinel waits before it calls an unreachable primary down, in milliseconds.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


class Sentinel:
    """One ``redis-server --sentinel`` on 127.0.0.1, watching ``mymaster``."""

    def __init__(self, binary: str, primary_port: int, quorum: int) -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="celery-events-sentinel-"))
        self.config = self.dir / "sentinel.conf"
        # A sentinel rewrites its own file as it learns the topology; it must be writable.
        self.config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            "protected-mode no\n"
            f"dir {self.dir}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} {quorum}\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._log = open(self.dir / "sentinel.log", "wb")
        self.process = subprocess.Popen(
            [self.binary, str(self.config), "--sentinel"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._ping, timeout=10, what=f"sentinel on port {self.port}")

    def _ping(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def primary(self) -> tuple[str, int] | None:
        """Where this sentinel says the primary is."""
        try:
            found = self.client().sentinel_get_master_addr_by_name(MASTER_NAME)
        except redis.RedisError:
            return None
        if not found:
            return None
        host = found[0].decode() if isinstance(found[0], bytes) else str(found[0])
        return host, int(found[1])

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None
            self._log.close()


class SentinelTopology:
    """A primary, ``replicas`` replicas and three sentinels (quorum 2), all on loopback."""

    def __init__(self, binary: str, replicas: int = 1) -> None:
        self.binary = binary
        self.nodes = [RedisServer(binary) for _ in range(1 + replicas)]
        self.sentinels: list[Sentinel] = []

    # -- start, stop ------------------------------------------------------------------------

    def start(self) -> None:
        first, *others = self.nodes
        self._start_replica(first, None)
        for node in others:
            self._start_replica(node, first.port)
        self.sentinels = [Sentinel(self.binary, first.port, quorum=2) for _ in range(3)]
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_settled()

    def _start_replica(self, node: RedisServer, primary_port: int | None) -> None:
        """Start ``node`` as a replica of ``primary_port`` (None: as the first primary)."""
        # RedisServer's own command line, plus where it replicates from. A replica that needs a
        # full copy gets it at once: Redis 7 waits 5 s for more replicas first by default
        # (repl-diskless-sync-delay), which a real deployment pays once after a failover.
        replicaof = [] if primary_port is None else ["--replicaof", "127.0.0.1", str(primary_port)]
        node.process = subprocess.Popen(
            [
                node.binary, "--bind", "127.0.0.1", "--port", str(node.port), "--dir", node.dir,
                "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                "--protected-mode", "no", "--repl-diskless-sync-delay", "0", *replicaof,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_until(node._ping, timeout=10, what=f"replica on port {node.port}")

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for node in self.nodes:
            node.stop(kill=True)

    # -- what tests ask ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The broker URL: every sentinel, in kombu's ``sentinel://...;sentinel://...`` form."""
        return ";".join(f"sentinel://127.0.0.1:{s.port}/0" for s in self.sentinels)

    def registry_url(self) -> str:
        """The same as a ``registry_url``, which names its primary in its query."""
        return f"{self.url}?master_name={MASTER_NAME}"

    def primary(self) -> RedisServer:
        """The node the sentinels' majority names as the primary now."""
        port = self._agreed_port()
        assert port is not None, "the sentinels do not agree on a primary"
        return next(node for node in self.nodes if node.port == port)

    def replicas(self) -> list[RedisServer]:
        primary = self.primary()
        return [node for node in self.nodes if node is not primary]

    def primary_client(self) -> redis.Redis:
        return self.primary().client()

    def _agreed_port(self) -> int | None:
        said = [s.primary() for s in self.sentinels]
        ports = [p[1] for p in said if p is not None]
        for port in set(ports):
            if ports.count(port) >= 2:
                return port
        return None

    def _role(self, node: RedisServer) -> dict[str, object] | None:
        if node.process is None or node.process.poll() is not None:
            return None
        try:
            return dict(node.client(timeout=1).info("replication"))
        except redis.RedisError:
            return None

    def settled(self) -> bool:
        """Every node up, the agreed primary a primary with every other node's replica
        connected and in sync, every sentinel knowing the other two and every replica."""
        port = self._agreed_port()
        if port is None or any(s.primary() != ("127.0.0.1", port) for s in self.sentinels):
            return False
        primary = next((n for n in self.nodes if n.port == port), None)
        info = self._role(primary) if primary is not None else None
        if info is None or info.get("role") != "master":
            return False
        if int(info.get("connected_slaves", 0) or 0) != len(self.nodes) - 1:
            return False
        for node in self.nodes:
            if node is primary:
                continue
            role = self._role(node)
            if role is None or role.get("role") != "slave" or role.get("master_link_status") != "up":
                return False
            if int(role.get("master_port", 0) or 0) != port:
                return False
        for sentinel in self.sentinels:
            try:
                state = sentinel.client().sentinel_master(MASTER_NAME)
            except redis.RedisError:
                return False
            if int(state.get("num-other-sentinels", 0)) != len(self.sentinels) - 1:
                return False
            if int(state.get("num-slaves", 0)) < len(self.nodes) - 1:
                return False
            if state.get("is_sdown") or state.get("is_odown"):
                return False
        return True

    def wait_settled(self, timeout: float = 30.0) -> None:
        wait_until(self.settled, timeout=timeout, interval=0.1, what="the Sentinel topology settled")

    def kill_primary(self) -> RedisServer:
        """``kill -9`` the primary; return it (stopped)."""
        primary = self.primary()
        primary.stop(kill=True)
        return primary

    def wait_failover(self, old: RedisServer, timeout: float = 20.0) -> RedisServer:
        """Wait until the sentinels agree on a primary other than ``old``; return it."""
        port = wait_until(
            lambda: (p := self._agreed_port()) is not None and p != old.port and p,
            timeout=timeout,
            interval=0.05,
            what="the sentinels promoted a replica",
        )
        return next(node for node in self.nodes if node.port == port)

    def restore(self) -> None:
        """Bring every node back as it was before a test killed or stopped some: a stopped
        node restarts as a replica of the current primary."""
        port = self._agreed_port()
        if port is None:
            # Nothing agreed yet (a failover under way): wait for it to finish.
            port = wait_until(self._agreed_port, timeout=20, what="the sentinels agree")
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                node.process = None
                self._start_replica(node, port)
        self.wait_settled()

    def flush(self) -> None:
        """Empty the primary (the replicas follow) and wait until the replicas caught up."""
        client = self.primary_client()
        client.flushall()
        # WAIT: the replicas hold the flush before the test starts writing.
        client.execute_command("WAIT", len(self.nodes) - 1, 5000)


def sentinel_binary() -> str | None:
    """The Redis binary, run with ``--sentinel`` (``redis-sentinel`` is a link to it)."""
    return redis_server_binary()


def _topology(replicas: int) -> Iterator[SentinelTopology]:
    binary = installed(sentinel_binary(), "redis-server is not installed (apt-get install redis-server redis-sentinel)")
    topology = SentinelTopology(binary, replicas=replicas)
    started = time.monotonic()
    topology.start()
    topology.started_in = time.monotonic() - started  # type: ignore[attr-defined]
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture(scope="session")
def sentinel_topology() -> Iterator[SentinelTopology]:
    """One primary, one replica, three sentinels for the whole run."""
    yield from _topology(replicas=1)


@pytest.fixture
def sentinel_url(sentinel_topology: SentinelTopology, monkeypatch: pytest.MonkeyPatch) -> str:
    """The topology's broker URL, every node up and its data emptied, and named in the
    environment the test services read (``CELERY_EVENTS_TEST_BROKER``, and
    ``CELERY_EVENTS_TEST_MASTER`` for its master_name)."""
    sentinel_topology.restore()
    sentinel_topology.flush()
    monkeypatch.setenv("CELERY_EVENTS_TEST_BROKER", sentinel_topology.url)
    monkeypatch.setenv("CELERY_EVENTS_TEST_MASTER", MASTER_NAME)
    return sentinel_topology.url
