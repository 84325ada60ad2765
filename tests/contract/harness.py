"""What the contract suite needs from a backend, and one harness per backend.

The suite is written once against :class:`BackendHarness`; each backend is one subclass that
knows how to run the contract services (``services.py``) on it: real ``celery worker``
processes against a real server, or deliveries run in the test process. A new backend
(RabbitMQ, Sentinel) joins by adding one class here to ``HARNESSES``, as kombu's
integration suite adds one module of mixin subclasses per transport and dramatiq parametrizes
its ``broker`` fixture.

Tests speak only the public API through what a harness hands them: a bus per service
(``publish``, ``dead_letters``), the effects the handlers recorded, and the backend's declared
capabilities. A harness lives for one test module; tests stay apart by event ids and by names
of their own, never by restarting workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from celery import Celery

from celery_events import EventBus
from celery_events.backends.base import Capabilities
from celery_events.testing import HandlerRunner

from ..harness import RabbitMQServer, RedisServer, Worker
from ..harness import wait_until as poll_until
from .services import SETTINGS, SUBSCRIPTIONS, Board, MemoryBoard, RedisBoard, build_service

T = TypeVar("T")

# Fast-starting workers, as in tests/conftest.py: mingle and gossip only slow start-up.
WORKER_ARGS = ["--without-mingle", "--without-gossip", "-c", "1"]


@dataclass(frozen=True)
class Effect:
    """One successful run of a handler, as the handler recorded it."""

    handler: str
    event_id: str
    name: str
    data: dict[str, Any]
    #: Which run of this handler on this event it was (1: the first).
    run: int


class BackendHarness(ABC):
    """Runs the contract services on one backend for one test module."""

    #: The harness's name, as tests and reports show it.
    name: ClassVar[str]
    #: The backend it runs (``celery_events.backends.capabilities_of``): its name unless set.
    backend_name: ClassVar[str] = ""
    #: Whether it needs servers or worker processes (its tests are marked ``integration``).
    integration: ClassVar[bool] = True
    #: Whether each handler has a queue of its own (RabbitMQ), not one queue per service.
    queue_per_handler: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def open(cls, request: pytest.FixtureRequest) -> BackendHarness:
        """The harness for one test module, made from the session's fixtures."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex[:8]
        self._buses: dict[str, EventBus] = {}

    # -- what each backend provides ---------------------------------------------------------

    @property
    @abstractmethod
    def board(self) -> Board:
        """Where the contract handlers record what they did."""

    @property
    def capabilities(self) -> Capabilities:
        """What the backend declares it guarantees."""
        return self.publisher.backend.capabilities

    @abstractmethod
    def make_bus(self, service: str) -> EventBus:
        """A bus for ``service`` in the test process, to publish and to read its dead letters
        (where workers are other processes, one without handlers, as a web process or an
        operator's shell holds it)."""

    @abstractmethod
    def _register(self, service: str) -> None:
        """Record ``service``'s subscriptions without running it."""

    @abstractmethod
    def _start(self, service: str) -> None:
        """Start ``service``'s worker (which records its subscriptions), once."""

    @abstractmethod
    def settled(self, services: Iterable[str]) -> bool:
        """Whether every delivery to ``services`` so far was handled, skipped or
        dead-lettered (none is queued, running or waiting for a retry)."""

    @abstractmethod
    def wait_until(self, condition: Callable[[], T], timeout: float = 30.0, what: str = "") -> T:
        """Let deliveries run until ``condition()`` is true; fail after ``timeout`` seconds."""

    def close(self) -> None:
        for bus in self._buses.values():
            bus.close()

    def logs(self) -> str:
        """What the backend's workers logged, shown when a test fails."""
        return ""

    # -- the same on every backend ----------------------------------------------------------

    def register(self, service: str) -> None:
        """Record ``service``'s subscriptions without running it (as a deploy script does)."""
        self._register(service)
        self._seen()

    def start(self, service: str) -> None:
        """Start ``service``'s worker: from now on its deliveries are handled."""
        self._start(service)
        self._seen()

    def _seen(self) -> None:
        # The publisher's view of the registry is refreshed in the background; a test that
        # publishes right after a service registered must not race that refresh.
        self.publisher.registry.refresh()

    def bus(self, service: str) -> EventBus:
        """The test's bus for ``service`` (made once per harness)."""
        if service not in self._buses:
            self._buses[service] = self.make_bus(service)
        return self._buses[service]

    @property
    def publisher(self) -> EventBus:
        """The bus of ``shop``, a service that only publishes."""
        return self.bus("shop")

    def unique(self, word: str) -> str:
        """An event-name word no other test uses (``purge(event_name=...)`` stays in a test)."""
        return f"{word}{self.token}{uuid.uuid4().hex[:6]}"

    def settle(self, *services: str, timeout: float = 30.0) -> None:
        """Wait until every delivery to ``services`` (default: every contract service) is
        over: after it, what did not happen will not happen."""
        chosen = services or tuple(SUBSCRIPTIONS)
        self.wait_until(lambda: self.settled(chosen), timeout, f"deliveries to {chosen} settled")

    def effects(self, event_id: str | None = None, handler: str | None = None) -> list[Effect]:
        """What handlers did, in order, for one event or handler if given."""
        found = [Effect(**json.loads(raw)) for raw in self.board.items("effects")]
        return [
            e for e in found
            if (event_id is None or e.event_id == event_id)
            and (handler is None or e.handler == handler)
        ]

    def handled(self, event_id: str) -> dict[str, int]:
        """How many times each handler succeeded on ``event_id``."""
        counts: dict[str, int] = {}
        for effect in self.effects(event_id):
            counts[effect.handler] = counts.get(effect.handler, 0) + 1
        return counts


class MemoryHarness(BackendHarness):
    """The memory backend: every service's bus in the test process on ``memory://``, its
    deliveries run by the testing kit's :class:`~celery_events.testing.HandlerRunner`, through
    the real delivery task, when the test waits for something.

    A started service's deliveries run; a registered one's wait on its queue. Retries run at
    once (their waits are skipped), so nothing is left to happen once the queues are empty.
    """

    name = "memory"
    integration = False

    @classmethod
    def open(cls, request: pytest.FixtureRequest) -> MemoryHarness:
        return cls()

    def __init__(self) -> None:
        super().__init__()
        self.url = f"memory://contract-{self.token}"
        # kombu's in-memory queues are one table per process: the names keep harnesses apart.
        self.queue_template = f"contract-{self.token}.{{service}}"
        self._board = MemoryBoard()
        self.services: dict[str, EventBus] = {}
        self.started: list[str] = []
        self.runner = HandlerRunner()

    @property
    def board(self) -> Board:
        return self._board

    def _service(self, service: str) -> EventBus:
        if service not in self.services:
            app = Celery(f"{service}-{self.token}", broker=self.url)
            self.services[service] = build_service(
                app, service, self.board, queue_template=self.queue_template
            )
        return self.services[service]

    def make_bus(self, service: str) -> EventBus:
        if service in SUBSCRIPTIONS:
            return self._service(service)
        return EventBus(Celery(f"{service}-{self.token}", broker=self.url), service=service)

    def _register(self, service: str) -> None:
        self._service(service).register()

    def _start(self, service: str) -> None:
        # As a worker does when it starts: record the subscriptions, then consume.
        self._service(service).register()
        if service not in self.started:
            self.started.append(service)

    def _waiting(self, service: str) -> int:
        bus = self.services.get(service)
        if bus is None:
            return 0
        with bus.app.connection_for_read() as connection:
            channel = connection.default_channel
            return sum(channel.queue_declare(q, passive=True)[1] for q in bus.queues)

    def settled(self, services: Iterable[str]) -> bool:
        self._work()
        return all(self._waiting(s) == 0 for s in services)

    def _work(self) -> int:
        return len(self.runner.work(*(self.services[s] for s in self.started)))

    def wait_until(self, condition: Callable[[], T], timeout: float = 30.0, what: str = "") -> T:
        # Deliveries run only here, in this thread: once none is left to run, nothing else
        # can happen, so a condition still false then fails at once instead of timing out.
        while True:
            ran = self._work()
            value = condition()
            if value:
                return value
            if not ran:
                raise AssertionError(
                    f"no delivery is left to run and still not: {what or condition}"
                )

    def close(self) -> None:
        super().close()
        held = list(self._buses.values())
        for bus in self.services.values():
            if bus not in held:
                bus.close()


class RedisHarness(BackendHarness):
    """A real ``redis-server`` and one real ``celery worker`` per contract service.

    Workers are started on first use and kept for the whole module; every key, queue and
    board entry of this harness carries its own prefix.
    """

    name = "redis"

    @classmethod
    def open(cls, request: pytest.FixtureRequest) -> RedisHarness:
        server: RedisServer = request.getfixturevalue("redis_server")
        if server.process is None or server.process.poll() is not None:
            server.start()  # a test before this one stopped it
        logs = request.getfixturevalue("tmp_path_factory").mktemp("contract-logs")
        return cls(server, Path(logs))

    def __init__(self, server: RedisServer, log_dir: Path) -> None:
        super().__init__()
        self.server = server
        self.url = server.url
        self.log_dir = log_dir
        self.prefix = f"contract-{self.token}:"
        self.client = server.client()
        self.client.flushall()
        self._board = RedisBoard(self.url, f"{self.prefix}board:")
        self.workers: dict[str, Worker] = {}

    @property
    def board(self) -> Board:
        return self._board

    def _settings(self) -> dict[str, Any]:
        return {
            **SETTINGS,
            "key_prefix": self.prefix,
            "queue_template": f"{self.prefix}events.{{service}}",
        }

    def make_bus(self, service: str) -> EventBus:
        app = Celery(f"{service}-{self.token}", broker=self.url)
        return EventBus(app, service=service, **self._settings())

    def _register(self, service: str) -> None:
        app = Celery(f"{service}-deploy-{uuid.uuid4().hex[:6]}", broker=self.url)
        deploy = build_service(app, service, self.board, **self._settings())
        try:
            deploy.register()
        finally:
            deploy.close()

    def _start(self, service: str) -> None:
        if service in self.workers:
            return
        env = {
            **os.environ,
            "CELERY_EVENTS_TEST_BROKER": self.url,
            "CONTRACT_SERVICE": service,
            "CONTRACT_KEY_PREFIX": self.prefix,
        }
        worker = Worker("tests.services.contract", env, WORKER_ARGS, self.log_dir)
        self.workers[service] = worker
        worker.wait_ready()

    def settled(self, services: Iterable[str]) -> bool:
        # The ledger holds every delivery from its fan-out until it is handled, skipped or
        # dead-lettered, retries included: an empty one means nothing is left to happen.
        return all(self.client.hlen(f"{self.prefix}ledger:{s}") == 0 for s in services)

    def wait_until(self, condition: Callable[[], T], timeout: float = 30.0, what: str = "") -> T:
        return poll_until(condition, timeout=timeout, what=what)

    def close(self) -> None:
        super().close()
        # Warm shutdown of every worker at once, as Ctrl-C does; a worker still running after
        # 20 s is killed.
        running = [w for w in self.workers.values() if w.process.poll() is None]
        for worker in running:
            worker.process.send_signal(signal.SIGTERM)
        for worker in running:
            try:
                worker.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
        for worker in self.workers.values():
            worker.stop()  # closes its log
        self.client.close()

    def logs(self) -> str:
        return "\n".join(
            f"----- log of the {service} worker -----\n{worker.log()[-20000:]}"
            for service, worker in self.workers.items()
        )


class RabbitMQHarness(RedisHarness):
    """A real RabbitMQ node routing and queueing, one real ``celery worker`` per contract
    service, the registry, inboxes, dead letters and the board on the real ``redis-server``.

    Each harness has a virtual host of its own on the session's node (its exchange and queues
    start empty, and nothing of another module's is counted), and one ``queue_type`` for its
    services' queues: :class:`QuorumRabbitMQHarness`, :class:`ClassicRabbitMQHarness`.
    """

    backend_name = "amqp"
    queue_per_handler = True
    queue_type: ClassVar[str]

    @classmethod
    def open(cls, request: pytest.FixtureRequest) -> RabbitMQHarness:
        server: RedisServer = request.getfixturevalue("redis_server")
        if server.process is None or server.process.poll() is not None:
            server.start()
        rabbitmq: RabbitMQServer = request.getfixturevalue("rabbitmq_server")
        logs = request.getfixturevalue("tmp_path_factory").mktemp("contract-logs")
        return cls(server, Path(logs), rabbitmq)

    def __init__(self, server: RedisServer, log_dir: Path, rabbitmq: RabbitMQServer) -> None:
        super().__init__(server, log_dir)
        self.rabbitmq = rabbitmq
        self.vhost = f"contract-{self.token}"
        self.url = rabbitmq.add_vhost(self.vhost)
        self.state_url = server.url

    def _settings(self) -> dict[str, Any]:
        return {
            **super()._settings(),
            "registry_url": self.state_url,
            "queue_type": self.queue_type,
        }

    def _start(self, service: str) -> None:
        if service in self.workers:
            return
        env = {
            **os.environ,
            "CELERY_EVENTS_TEST_BROKER": self.url,
            "CELERY_EVENTS_TEST_STATE": self.state_url,
            "CONTRACT_SERVICE": service,
            "CONTRACT_KEY_PREFIX": self.prefix,
            "CONTRACT_SETTINGS": json.dumps(
                {"registry_url": self.state_url, "queue_type": self.queue_type}
            ),
        }
        # A node name each: RabbitMQ keeps a worker's remote-control queue exclusive to it.
        args = [*WORKER_ARGS, "-n", f"{service}-{self.token}@%h"]
        worker = Worker("tests.services.contract", env, args, self.log_dir)
        self.workers[service] = worker
        worker.wait_ready()

    def settled(self, services: Iterable[str]) -> bool:
        # RabbitMQ holds every delivery until it is acked (handled, skipped or dead-lettered):
        # waiting, prefetched, running or waiting for a retry, in a handler's queue
        # ({queue_template}.{handler}), the service's dead-letter queue (on its way to the
        # dead letters in Redis) or a delay queue of a retry (celery_delayed_*, any service's:
        # counted for every one). All of them empty: nothing is left to happen.
        base = self.prefix.rstrip(":.")
        owned = tuple(
            name for s in services
            for name in (f"{self.prefix}events.{s}.", f"{base}.dead.{s}")
        )
        return not any(
            count for queue, count in self.rabbitmq.messages(self.vhost).items()
            if queue.startswith(owned) or queue.startswith("celery_delayed_")
        )

    def wait_until(self, condition: Callable[[], T], timeout: float = 30.0, what: str = "") -> T:
        # rabbitmqctl starts a VM per call: poll at a pace the machine can afford.
        return poll_until(condition, timeout=timeout, interval=0.3, what=what)


class QuorumRabbitMQHarness(RabbitMQHarness):
    """RabbitMQ with quorum queues for the event queues (the default)."""

    name = "rabbitmq-quorum"
    queue_type = "quorum"


class ClassicRabbitMQHarness(RabbitMQHarness):
    """RabbitMQ with classic queues for the event queues (``queue_type="classic"``)."""

    name = "rabbitmq-classic"
    queue_type = "classic"


#: Every backend the suite runs on, in this order; a new backend is one more class here.
HARNESSES: tuple[type[BackendHarness], ...] = (
    MemoryHarness, RedisHarness, QuorumRabbitMQHarness, ClassicRabbitMQHarness,
)
HARNESSES += (__import__("tests.contract.sentinel", fromlist=["_"]).SentinelHarness,)
