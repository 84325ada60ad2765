"""A fleet without Redis: RabbitMQ routes and keeps the registry, PostgreSQL keeps the state.

A Django subscriber service (the test project's `warehouse`, a real `celery worker`) and a
plain Celery publisher (`shop`) share one RabbitMQ node (with its management plugin, for
`eventbus status`); neither names a ``registry_url`` or a ``state_url``, and the Django
service's ``CELERY_EVENTS["state"]`` is ``"database"``: inboxes, leases and dead letters are
rows in PostgreSQL. No redis-server is started for these tests, and the ports a Redis default
could name (6379, Sentinel's 26379) are held by a tripwire that fails the test if anything
connects to them. The handler's effects are rows in the database, its notes files.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from django.db import connections
from django.test import override_settings

from celery_events import EventBus
from celery_events.contrib.django.models import DeadLetterRecord, DeliveryLease
from celery_events.contrib.django.state import DatabaseState

from ..conftest import WORKER_ARGS
from ..harness import ROOT, Worker, wait_until
from ..rabbitmq_managed import ManagedNode
from .conftest import BOTH, SETTINGS_MODULE
from .postgres import PostgresServer
from .settings import CELERY_EVENTS
from .warehouse.models import Shipment

pytestmark = [
    pytest.mark.django_db(transaction=True, databases=BOTH),
    pytest.mark.integration,
    pytest.mark.rabbitmq,
]

STOW = "warehouse.stow"
#: Where a Redis default points: redis-py's and kombu's 6379, Sentinel's 26379.
REDIS_PORTS = (6379, 26379)
REDIS_URL = re.compile(r"\b(rediss?|redis\+socket|sentinel)://", re.IGNORECASE)


class Tripwire:
    """Listening sockets on ``REDIS_PORTS`` of 127.0.0.1 that note every connection.

    Binding them proves no Redis listens there; a client that connects (to a default it fell
    back on) is noted and refused, and the test fails. A port the machine's own Redis holds is
    left out, with a warning."""

    def __init__(self) -> None:
        #: (port, who connected: the client's socket as `ss -p` shows it, with its process)
        self.connections: list[tuple[int, str]] = []
        self._sockets: list[socket.socket] = []
        for port in REDIS_PORTS:
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                # A system Redis of the machine (Debian starts one with its package): the
                # other checks (no Redis configured, redis-py never imported) still hold.
                sock.close()
                warnings.warn(f"port {port} is taken ({exc}); no tripwire there", stacklevel=2)
                continue
            sock.listen(16)
            self._sockets.append(sock)
            threading.Thread(target=self._accept, args=(sock, port), daemon=True).start()

    def _accept(self, sock: socket.socket, port: int) -> None:
        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return  # closed
            peer_port = client.getpeername()[1]
            who = subprocess.run(
                ["ss", "-Htnp", "src", f"127.0.0.1:{peer_port}"],
                capture_output=True, text=True, timeout=10,
            ).stdout.strip()
            self.connections.append((port, who))
            client.close()

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


@pytest.fixture(scope="module")
def tripwire() -> Iterator[Tripwire]:
    wire = Tripwire()
    yield wire
    wire.close()


@pytest.fixture(autouse=True)
def nothing_connects_to_redis(tripwire: Tripwire) -> Iterator[None]:
    yield
    assert not tripwire.connections, f"something connected to a Redis port: {tripwire.connections}"


@pytest.fixture
def node(tripwire: Tripwire, managed_rabbitmq: ManagedNode) -> ManagedNode:
    """A private RabbitMQ node with the management plugin (tests/rabbitmq_managed.py)."""
    return managed_rabbitmq


@pytest.fixture(autouse=True)
def state_in_postgres() -> Iterator[None]:
    with override_settings(CELERY_EVENTS={**CELERY_EVENTS, "database": "pg", "state": "database"}):
        yield


@pytest.fixture
def fleet_env(node: ManagedNode, postgres_server: PostgresServer, tmp_path: Path) -> dict[str, str]:
    """The environment of the warehouse's processes: the test project's settings on RabbitMQ
    and PostgreSQL, and nothing of the other tests' (their Redis) inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_EVENTS_TEST_")}
    return {
        **env,
        "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
        "CELERY_EVENTS_TEST_BROKER": node.url,
        "CELERY_EVENTS_TEST_MANAGEMENT": node.management_url,
        "CELERY_EVENTS_TEST_NO_REDIS": "1",
        "CELERY_EVENTS_TEST_PG_PORT": str(postgres_server.port),
        "CELERY_EVENTS_TEST_PG_NAME": connections["pg"].settings_dict["NAME"],
        "CELERY_EVENTS_TEST_DATABASE": "pg",
        "CELERY_EVENTS_TEST_NOTES": str(tmp_path),
    }


@pytest.fixture
def worker(
    fleet_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Worker]:
    process = Worker("tests.django.proj", fleet_env, [*WORKER_ARGS, "-n", "warehouse@%h"], tmp_path)
    try:
        yield process.wait_ready()
    finally:
        process.stop()
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            print(f"----- log of the warehouse worker -----\n{process.log()[-20000:]}")


@pytest.fixture
def shop(node: ManagedNode) -> Iterator[EventBus]:
    """A plain Celery publisher on the same node; its state store is the same database."""
    bus = EventBus(Celery("shop", broker=node.url), service="shop", state=DatabaseState("pg"))
    yield bus
    bus.close()


def eventbus(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`celery -A tests.django.proj eventbus ARGS` as the warehouse's operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.django.proj", "eventbus", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )


def eventbus_json(env: dict[str, str], *args: str) -> Any:
    done = eventbus(env, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def runs(notes: Path, event_id: str) -> list[int]:
    path = notes / f"{event_id}.runs"
    return [int(pid) for pid in path.read_text().split()] if path.exists() else []


def shipments(event_id: str) -> int:
    return Shipment.objects.using("pg").filter(event_id=event_id).count()


def test_the_fleet_names_no_redis_and_its_worker_starts_ready(
    fleet_env: dict[str, str], worker: Worker
) -> None:
    # The service's bus, as its processes make it from the Django settings
    done = subprocess.run(
        [sys.executable, "-c",
         "import django, json, sys; django.setup();"
         " from celery_events.contrib.django import get_bus; b = get_bus();"
         " subscriptions = b.registry.subscriptions();"
         " print(json.dumps({'broker': b.app.conf.broker_url,"
         " 'subscriptions': len(subscriptions),"
         " 'redis_backend': [m for m in sys.modules if m.startswith('celery_events.backends.redis')],"
         " 'result_backend': b.app.conf.result_backend,"
         " 'registry_url': b.settings.registry_url, 'state_url': b.settings.state_url,"
         " 'backend': b.backend.name, 'description': b.backend.description}))"],
        cwd=ROOT, env=fleet_env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["broker"].startswith("amqp://") and found["backend"] == "amqp"
    assert found["registry_url"] is None and found["state_url"] is None
    assert found["result_backend"] is None
    # It read the registry off RabbitMQ, and never loaded the Redis backend
    assert found["subscriptions"] >= 3 and found["redis_backend"] == []
    assert "registry on RabbitMQ" in found["description"], found["description"]
    # Nothing in the fleet's environment names a Redis
    named = {k: v for k, v in fleet_env.items() if REDIS_URL.search(v) or k.startswith("REDIS")}
    assert not named
    assert " ready." in worker.log() and worker.process.poll() is None
    assert not REDIS_URL.search(worker.log()) and "Redis" not in worker.log()


def test_events_reach_their_handler_once_with_the_inbox_in_the_database(
    worker: Worker, shop: EventBus, fleet_env: dict[str, str], tmp_path: Path
) -> None:
    published = [shop.publish("parcel.stowed", {"parcel": n}) for n in range(5)]
    assert all(len(p.deliveries) == 1 for p in published)
    for p in published:
        wait_until(lambda p=p: shipments(p.event.id) == 1, timeout=30)
    # Each ran once, its inbox record a row in PostgreSQL
    for p in published:
        assert len(runs(tmp_path, p.event.id)) == 1
        wait_until(lambda p=p: DeliveryLease.objects.using("pg").filter(
            handler=STOW, event_id=p.event.id, state="done").exists())
    # The same event published again is not handled again
    again = published[0].event
    shop.publish_event(again)
    later = shop.publish("parcel.stowed", {"parcel": 9})  # behind the duplicate
    wait_until(lambda: shipments(later.event.id) == 1, timeout=30)
    wait_until(lambda: "already handled event" in worker.log())
    assert shipments(again.id) == 1 and len(runs(tmp_path, again.id)) == 1

    # The operator's commands read this fleet: its subscriptions, catalog and status
    subscriptions = eventbus_json(fleet_env, "subscriptions", "--service", "warehouse")
    assert {(s["pattern"], s["handler"], s["queue"]) for s in subscriptions} >= {
        ("parcel.#", STOW, "events.warehouse.stow")
    }
    catalog = eventbus_json(fleet_env, "catalog")
    [entry] = [e for e in catalog["events"] if e["name"] == "parcel.stowed"]
    assert entry["publishers"] == ["shop"]
    assert [(s["service"], s["handler"]) for s in entry["subscribers"]] == [("warehouse", STOW)]

    def settled() -> Any:
        status = eventbus_json(fleet_env, "status")
        services = {s["service"]: s for s in status["services"]}
        warehouse = services.get("warehouse")
        return status if warehouse and (warehouse["waiting"], warehouse["in_flight"]) == (0, 0) else None

    status = wait_until(settled, timeout=30, interval=0.5)
    assert status["backend"]["name"] == "amqp"
    warehouse = {s["service"]: s for s in status["services"]}["warehouse"]
    assert warehouse["dead_letters"] == 0
    assert "events.warehouse.stow" in [q["queue"] for q in warehouse["queues"]]


def test_a_failing_handler_ends_as_a_dead_letter_in_the_database_listed_and_replayed(
    worker: Worker, shop: EventBus, fleet_env: dict[str, str], tmp_path: Path
) -> None:
    event = shop.new_event("parcel.stowed", {"parcel": 3})
    (tmp_path / f"{event.id}.fail").touch()
    shop.publish_event(event)
    # Three attempts (max_retries=2), then a dead letter, a row in PostgreSQL
    wait_until(lambda: DeadLetterRecord.objects.using("pg").filter(service="warehouse").exists(),
               timeout=30)
    assert len(runs(tmp_path, event.id)) == 3 and shipments(event.id) == 0
    # `eventbus dead-letters list` shows it, and `status` counts it
    [letter] = eventbus_json(fleet_env, "dead-letters", "list")
    assert letter["handler"] == STOW and letter["event_id"] == event.id
    assert letter["reason"] == "retries_exhausted" and letter["attempts"] == 3
    assert letter["error_type"] == "RuntimeError"
    status = eventbus_json(fleet_env, "status")
    assert {s["service"]: s for s in status["services"]}["warehouse"]["dead_letters"] == 1
    # Once the cause is gone, `eventbus dead-letters replay` delivers it once
    (tmp_path / f"{event.id}.fail").unlink()
    [replayed] = eventbus_json(fleet_env, "dead-letters", "replay", letter["id"])
    assert replayed["id"] == letter["id"]
    wait_until(lambda: shipments(event.id) == 1, timeout=30)
    assert len(runs(tmp_path, event.id)) == 4
    assert not DeadLetterRecord.objects.using("pg").exists()
    done = eventbus(fleet_env, "dead-letters", "list")
    assert done.returncode != 0 and "No dead letters" in done.stderr
