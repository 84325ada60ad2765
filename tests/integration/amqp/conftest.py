"""Fixtures of the RabbitMQ backend's tests: the session's RabbitMQ node, emptied of what
the last test declared, and the test Redis as the state store."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection

from celery_events import EventBus

from ...conftest import WORKER_ARGS
from ...harness import RabbitMQServer, Worker, stop_workers


@dataclass
class Rabbit:
    server: RabbitMQServer
    url: str
    state_url: str

    def ctl(self, *args: str) -> str:
        """``rabbitmqctl`` against the test node (its own name, cookie and epmd port)."""
        binary = Path(self.server.binary).with_name("rabbitmqctl")
        node = self.server.env["RABBITMQ_NODENAME"]
        done = subprocess.run(
            [str(binary), "-n", node, "-q", *args],
            env=self.server.env, capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def queues(self) -> dict[str, dict[str, Any]]:
        """Every queue: its type, arguments and ready messages."""
        out = self.ctl("list_queues", "name", "type", "arguments", "messages_ready", "--formatter", "json")
        queues = {q["name"]: q for q in json.loads(out or "[]")}
        for queue in queues.values():
            # rabbitmqctl lists arguments as [name, AMQP type, value] triples (or a dict).
            arguments = queue.get("arguments") or {}
            if isinstance(arguments, list):
                arguments = {a[0]: a[-1] for a in arguments}
            queue["arguments"] = arguments
        return queues

    def ready(self, queue: str) -> int:
        """Messages waiting in ``queue``, now (rabbitmqctl's counts lag by seconds)."""
        with Connection(self.url) as connection:
            return int(connection.channel().queue_declare(queue, passive=True).message_count)

    def delete_all(self) -> None:
        """Delete every queue and our exchanges (one rabbitmqctl call each to list them)."""
        queues = list(self.queues())
        exchanges = [
            e["name"]
            for e in json.loads(self.ctl("list_exchanges", "name", "--formatter", "json") or "[]")
            if e["name"].startswith(("celery_events", "celery_delayed", "celeryev"))
        ]
        with Connection(self.url) as connection:
            channel = connection.channel()
            for name in queues:
                channel.queue_delete(name)
            for name in exchanges:
                channel.exchange_delete(name)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "CELERY_EVENTS_TEST_BROKER": self.url,
            "CELERY_EVENTS_TEST_STATE": self.state_url,
            **extra,
        }


@pytest.fixture
def rabbit(rabbitmq_server: RabbitMQServer, redis_url: str) -> Iterator[Rabbit]:
    if rabbitmq_server.process is None or rabbitmq_server.process.poll() is not None:
        rabbitmq_server.start()
    rabbit = Rabbit(rabbitmq_server, rabbitmq_server.url, redis_url)
    rabbit.delete_all()
    yield rabbit


@pytest.fixture
def start_rabbit_worker(
    rabbit: Rabbit, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Worker]]:
    """`celery -A tests.services.rabbit worker` on the test node; stopped after the test."""
    started: list[Worker] = []

    def start(*, ready: bool = True, args: list[str] | None = None, **env: str) -> Worker:
        full_env = {**os.environ, **rabbit.env(**env)}
        # Each worker its own node name: two on one host would share a pidbox queue.
        name = f"{env.get('RABBIT_SERVICE', 'rabbit')}{len(started)}@%h"
        worker = Worker(
            "tests.services.rabbit", full_env, [*WORKER_ARGS, "-n", name, *(args or [])], tmp_path
        )
        started.append(worker)
        return worker.wait_ready() if ready else worker

    yield start
    stop_workers(started, request)


def records(client: redis.Redis, key: str) -> list[dict[str, object]]:
    """The JSON records a test service pushed on ``key`` (its effects, its runs)."""
    return [json.loads(raw) for raw in client.lrange(key, 0, -1)]


@pytest.fixture
def publisher(rabbit: Rabbit) -> Iterator[EventBus]:
    """A publishing service, ``shop``, on the test's RabbitMQ, registry and state on Redis."""
    bus = EventBus(Celery("shop", broker=rabbit.url), service="shop", registry_url=rabbit.state_url)
    yield bus
    bus.close()
