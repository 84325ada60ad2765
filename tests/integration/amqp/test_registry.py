"""The registry on RabbitMQ itself (a stream), with no Redis: real nodes, real connections."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator

import amqp
import pytest
import redis
from celery import Celery

from celery_events import EventBus
from celery_events.backends.amqp import registry as registry_module
from celery_events.backends.amqp.registry import AmqpRegistry, stream_name
from celery_events.backends.base import StoreError
from celery_events.errors import RegistryError
from celery_events.registry import Registry, Subscription

from ...harness import RabbitMQServer, rabbitmq_server_binary, wait_until
from ...rabbitmq_cluster import RabbitMQCluster

STALENESS = 1.0


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A stream of the test's own, on the shared node."""
    return f"t{abs(hash(request.node.nodeid)) % 10**8}-{time.monotonic_ns()}:"


def _registry(url: str, prefix: str) -> Registry:
    return Registry(
        AmqpRegistry(url, key_prefix=prefix, timeout=5.0),
        refresh_interval=0.1,
        max_staleness=STALENESS,
    )


def _subscriptions(service: str, count: int = 1) -> list[Subscription]:
    return [
        Subscription(f"user.e{n}", service, f"{service}.handler{n}", f"events.{service}")
        for n in range(count)
    ]


def test_a_publisher_sees_a_subscriber_register_and_unregister_within_the_staleness(
    rabbitmq_server: RabbitMQServer, prefix: str
) -> None:
    subscriber = _registry(rabbitmq_server.url, prefix)
    publisher = _registry(rabbitmq_server.url, prefix)
    try:
        assert publisher.match("user.e0") == []
        subscriber.register("orders", _subscriptions("orders"))
        registered = time.monotonic()
        found = wait_until(lambda: publisher.match("user.e0"), timeout=5, interval=0.01)
        assert time.monotonic() - registered <= STALENESS
        assert [(s.service, s.handler, s.queue) for s in found] == [
            ("orders", "orders.handler0", "events.orders")
        ]
        subscriber.register("orders", _subscriptions("orders", 2))
        wait_until(lambda: publisher.match("user.e1"), timeout=STALENESS)

        subscriber.unregister("orders")
        removed = time.monotonic()
        wait_until(lambda: not publisher.match("user.e0"), timeout=5, interval=0.01)
        assert time.monotonic() - removed <= STALENESS
        assert publisher.subscriptions() == []
    finally:
        subscriber.close()
        publisher.close()
        subscriber.store.close()
        publisher.store.close()


def test_two_bus_apps_route_through_the_registry_on_rabbitmq_with_no_redis_registry(
    rabbitmq_server: RabbitMQServer, redis_url: str, prefix: str
) -> None:
    # Given a subscriber and a publisher on RabbitMQ, inboxes in Redis, no registry_url
    def bus(service: str) -> EventBus:
        return EventBus(
            Celery(service, broker=rabbitmq_server.url),
            service=service,
            state_url=redis_url,
            key_prefix=prefix,
            registry_refresh_interval=0.1,
            registry_max_staleness=STALENESS,
        )

    subscriber, publisher = bus("orders"), bus("users")

    @subscriber.subscribe("user.*")
    def welcome(event: object) -> None: ...

    try:
        assert "registry on RabbitMQ" in publisher.backend.description
        assert publisher.publish("user.registered", {}).deliveries == ()
        # When the subscriber registers
        subscriber.register()
        registered = time.monotonic()
        # Then the publisher's events reach it within the staleness bound
        result = wait_until(
            lambda: publisher.publish("user.registered", {"n": 1}).deliveries, timeout=5,
            interval=0.01,
        )
        assert time.monotonic() - registered <= STALENESS
        assert [d.handler.rsplit(".", 1)[-1] for d in result] == ["welcome"]
        assert publisher.registry.publishers() == [("users", "user.registered")]
        # And nothing of the registry is in Redis
        client = redis.Redis.from_url(redis_url)
        assert not [k for k in client.keys("*") if b"subscriptions" in k or b"version" in k]
        # When it unregisters, publishes reach nobody again within the bound
        subscriber.registry.unregister("orders")
        removed = time.monotonic()
        wait_until(lambda: not publisher.publish("user.registered", {}).deliveries, timeout=5,
                   interval=0.01)
        assert time.monotonic() - removed <= STALENESS
    finally:
        subscriber.close()
        publisher.close()


def test_the_catalog_records_publishers_once(rabbitmq_server: RabbitMQServer, prefix: str) -> None:
    first = _registry(rabbitmq_server.url, prefix)
    second = _registry(rabbitmq_server.url, prefix)
    try:
        first.record_published("billing", "invoice.paid")
        first.record_published("billing", "invoice.paid")
        wait_until(lambda: second.publishers() == [("billing", "invoice.paid")], timeout=5)
        second.record_published("billing", "invoice.paid")
        second.record_published("orders", "order.placed")
        wait_until(lambda: len(first.publishers()) == 2, timeout=5)
        assert first.publishers() == [("billing", "invoice.paid"), ("orders", "order.placed")]
        # Written once per field however often it is recorded: hello, then the two fields.
        assert first.store.version() == b"2"
    finally:
        first.store.close()
        second.store.close()


def test_concurrent_readers_never_take_records_from_each_other(
    rabbitmq_server: RabbitMQServer, prefix: str
) -> None:
    writer = AmqpRegistry(rabbitmq_server.url, key_prefix=prefix)
    readers = [AmqpRegistry(rabbitmq_server.url, key_prefix=prefix) for _ in range(4)]
    expected = {f"svc{n}".encode(): json.dumps({"n": n}).encode() for n in range(50)}
    seen: list[dict[bytes, bytes]] = []
    errors: list[BaseException] = []

    def read(store: AmqpRegistry) -> None:
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                records = store.load()[1]
                if records == expected:
                    seen.append(records)
                    return
                time.sleep(0.01)
            seen.append(store.load()[1])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(r,)) for r in readers]
    try:
        for thread in threads:
            thread.start()
        for service, record in expected.items():
            writer.write(service.decode(), record.decode())
        for thread in threads:
            thread.join(30)
        assert errors == []
        assert seen == [expected] * len(readers)
        # A reader that starts after all the writes replays the same.
        late = AmqpRegistry(rabbitmq_server.url, key_prefix=prefix)
        assert late.load() == writer.load()
        late.close()
    finally:
        writer.close()
        for reader in readers:
            reader.close()


def test_a_forked_child_reads_on_its_own_connection(
    rabbitmq_server: RabbitMQServer, prefix: str
) -> None:
    store = AmqpRegistry(rabbitmq_server.url, key_prefix=prefix)
    store.write("orders", '{"n": 1}')
    assert store.load()[1] == {b"orders": b'{"n": 1}'}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            store.write("billing", '{"n": 2}')
            records = store.load()[1]
            os.write(write, json.dumps(sorted(k.decode() for k in records)).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        assert json.loads(pipe.read()) == ["billing", "orders"]
    # The parent's connection still works, and follows the child's write.
    wait_until(lambda: b"billing" in store.load()[1], timeout=5)
    store.close()


@pytest.fixture
def own_node() -> Iterator[RabbitMQServer]:
    """A node of the test's own, which it restarts."""
    binary = rabbitmq_server_binary()
    if binary is None:
        pytest.skip("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
    server = RabbitMQServer(binary)
    server.start()
    yield server
    server.stop()


def test_a_broker_restart_keeps_the_records_and_readers_resume(own_node: RabbitMQServer) -> None:
    prefix = "celery_events:"
    subscriber = _registry(own_node.url, prefix)
    publisher = _registry(own_node.url, prefix)
    subscriber.register("orders", _subscriptions("orders"))
    subscriber.register("billing", _subscriptions("billing"))
    wait_until(lambda: len(publisher.subscriptions()) == 2, timeout=5)

    own_node.stop(keep_data=True)
    own_node.start()

    # The reader that was connected makes its connection again and resumes where it was.
    wait_until(lambda: len(publisher.subscriptions()) == 2, timeout=10)
    subscriber.register("shipping", _subscriptions("shipping"))
    wait_until(lambda: publisher.match("user.e0") and len(publisher.match("user.e0")) == 3,
               timeout=10)
    # A new process replays the stream the restarted node kept.
    fresh = AmqpRegistry(own_node.url, key_prefix=prefix)
    assert set(fresh.load()[1]) == {b"orders", b"billing", b"shipping"}
    fresh.close()

    own_node.stop(keep_data=True)
    with pytest.raises(RegistryError, match="registry stream 'celery_events.registry'"):
        publisher.refresh()
    own_node.start()
    subscriber.store.close()
    publisher.store.close()


def test_an_unreachable_broker_is_a_store_error_naming_the_stream() -> None:
    store = AmqpRegistry("amqp://guest:guest@127.0.0.1:1//", timeout=1.0)
    with pytest.raises(StoreError, match="celery_events.registry") as caught:
        store.load()
    assert caught.value.fix is not None and "RabbitMQ" in caught.value.fix
    assert stream_name("celery_events:") == "celery_events.registry"


def test_snapshots_let_a_new_store_skip_the_history_and_survive_retention(
    rabbitmq_server: RabbitMQServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small enough that this test writes several snapshots and the broker drops segments.
    monkeypatch.setattr(registry_module, "SNAPSHOT_EVERY", 20)
    monkeypatch.setattr(registry_module, "MAX_LENGTH_BYTES", 40_000)
    monkeypatch.setattr(registry_module, "SEGMENT_BYTES", 8_000)
    writer = AmqpRegistry(rabbitmq_server.url, key_prefix=prefix)
    live: dict[bytes, bytes] = {}
    for n in range(400):
        service = f"svc{n % 7}"
        if n % 13 == 0:
            writer.remove(service)
            live.pop(service.encode(), None)
        else:
            record = json.dumps({"n": n, "pad": "x" * 200})
            writer.write(service, record)
            live[service.encode()] = record.encode()
    writer.record_published("svc1 user.registered", "1.0")
    assert writer.load()[1] == live

    fresh = AmqpRegistry(rabbitmq_server.url, key_prefix=prefix)
    assert fresh.load()[1] == live
    assert fresh.published() == ["svc1 user.registered"]
    # It started after a snapshot's messages, not at the beginning...
    assert fresh._start > 300
    # ...and the broker no longer has the beginning: retention dropped it.
    assert _first_offset(rabbitmq_server, stream_name(prefix)) > 0
    writer.close()
    fresh.close()


def _first_offset(server: RabbitMQServer, stream: str) -> int:
    connection = amqp.Connection(f"127.0.0.1:{server.port}", userid="guest", password="guest")
    connection.connect()
    try:
        channel = connection.channel()
        channel.basic_qos(0, 1, False)
        first: list[int] = []
        channel.basic_consume(
            stream,
            callback=lambda m: first.append(int(m.headers["x-stream-offset"])),
            arguments={"x-stream-offset": "first"},
        )
        while not first:
            connection.drain_events(timeout=5)
        return first[0]
    finally:
        connection.close()


def test_a_three_node_cluster_keeps_the_records_when_the_streams_leader_dies(
    rabbitmq_cluster: RabbitMQCluster, prefix: str
) -> None:
    for node in rabbitmq_cluster.nodes:
        if node.process is None:  # an earlier test failed before starting it again
            rabbitmq_cluster.restart(node)
    # Given records written through the broker URL that lists all three nodes
    writer = AmqpRegistry(rabbitmq_cluster.url, key_prefix=prefix, timeout=10.0)
    reader = AmqpRegistry(rabbitmq_cluster.url, key_prefix=prefix, timeout=10.0)
    for service in ("orders", "billing", "shipping"):
        writer.write(service, json.dumps({"service": service}))
    assert set(reader.load()[1]) == {b"orders", b"billing", b"shipping"}
    row = rabbitmq_cluster.queues()[stream_name(prefix)]
    assert row["type"] == "stream" and len(row["members"]) == 3  # type: ignore[arg-type]
    leader = rabbitmq_cluster.node(str(row["leader"]))
    # When the node that leads the stream is killed
    rabbitmq_cluster.kill(leader)
    try:
        # Then a new store reads every record from the two nodes left
        fresh = AmqpRegistry(rabbitmq_cluster.url, key_prefix=prefix, timeout=10.0)
        assert set(fresh.load()[1]) == {b"orders", b"billing", b"shipping"}
        # And writes go on (a majority of the replicas is left), seen by the earlier reader
        started = time.monotonic()
        writer.write("mailer", json.dumps({"service": "mailer"}))
        print(f"first write after the leader's death took {time.monotonic() - started:.2f} s")
        wait_until(lambda: b"mailer" in reader.load()[1], timeout=10)
        assert set(fresh.load()[1]) == {b"orders", b"billing", b"shipping", b"mailer"}
    finally:
        rabbitmq_cluster.restart(leader)
    # And the node that comes back serves the same records
    back = AmqpRegistry(leader.url, key_prefix=prefix, timeout=10.0)
    wait_until(lambda: len(back.load()[1]) == 4, timeout=30)
    for store in (writer, reader, fresh, back):
        store.close()
