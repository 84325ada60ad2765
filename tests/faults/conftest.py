"""The broker the fault tests run on: each test runs on Redis and on RabbitMQ.

On RabbitMQ the registry, inboxes, dead letters and the handlers' effects live in the test
Redis (``CELERY_EVENTS_TEST_STATE``), and each test gets a virtual host of its own on the
session's node, so it starts with no exchange, queue or message of an earlier test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ..harness import RabbitMQServer, RedisServer


@dataclass
class Broker:
    name: str
    url: str
    #: The Redis of the registry, inbox and effects (the broker itself when it is Redis).
    state_url: str | None
    redis: RedisServer
    rabbitmq: RabbitMQServer | None = None
    vhost: str = "/"

    def env(self) -> dict[str, str]:
        env = {"CELERY_EVENTS_TEST_BROKER": self.url}
        if self.state_url is not None:
            env["CELERY_EVENTS_TEST_STATE"] = self.state_url
        return env

    def crash(self) -> str:
        """Stop the broker and start it again on its data; what it did. Redis restarts (its
        append-only file is synced on every write); the RabbitMQ node is killed with
        `kill -9` (durable queues, persistent messages, publisher confirms)."""
        if self.rabbitmq is None:
            self.redis.restart()
            return "redis restart"
        self.rabbitmq.kill()
        self.rabbitmq.start()
        return "rabbitmq kill -9"

    def waiting(self) -> int:
        """RabbitMQ only: messages in any queue of the test's virtual host (ready, or
        delivered and not acked yet)."""
        assert self.rabbitmq is not None
        return sum(self.rabbitmq.messages(self.vhost).values())


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(
    request: pytest.FixtureRequest, redis_server: RedisServer, redis_url: str
) -> Iterator[Broker]:
    if request.param == "redis":
        yield Broker("redis", redis_url, None, redis_server)
        return
    server: RabbitMQServer = request.getfixturevalue("rabbitmq_server")
    if server.process is None:
        server.start()  # an earlier test killed it and failed before starting it again
    vhost = f"faults-{uuid.uuid4().hex[:8]}"
    url = server.add_vhost(vhost)
    yield Broker("rabbitmq", url, redis_url, redis_server, server, vhost)
