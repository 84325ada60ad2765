"""`celery -A <app> eventbus spec`: the AsyncAPI document of a fleet registered in a real
registry (Redis), checked against the official AsyncAPI 3.0.0 schema; once on RabbitMQ."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from celery import Celery
from pydantic import BaseModel

from celery_events import Event, EventBus

from ..asyncapi_schema import asyncapi_errors, payload_validator
from ..harness import RabbitMQServer
from .test_cli import SHOP, eventbus

RABBIT = "tests.services.rabbit"


class Address(BaseModel):
    street: str
    city: str


class UserRegistered(BaseModel):
    user_id: int
    address: Address


def register(bus: EventBus) -> None:
    """Record the bus's subscriptions and declarations in the registry, as its worker does."""
    bus.register()


@contextmanager
def two_services(broker: str, registry_url: str | None = None) -> Iterator[list[EventBus]]:
    """users declares user.registered v1 and v2 (a pydantic model); orders takes v2 of it,
    every invoice event, and declares order.created."""
    extra = {} if registry_url is None else {"registry_url": registry_url}
    users = EventBus(Celery("users", broker=broker), service="users", **extra)
    users.declare("user.registered", schema={"type": "object", "required": ["user_id"]}, version=1)
    users.declare("user.registered", schema=UserRegistered, version=2)
    orders = EventBus(Celery("orders", broker=broker), service="orders", **extra)
    orders.declare("order.created", schema={"type": "object"}, version=1)

    @orders.subscribe("user.registered", versions=[2])
    def welcome_order(event: Event) -> None: ...

    @orders.subscribe("invoice.#")
    def file_invoice(event: Event) -> None: ...

    try:
        for bus in (users, orders):
            register(bus)
        yield [users, orders]
    finally:
        for bus in (users, orders):
            bus.close()


@pytest.fixture
def fleet(redis_url: str) -> Iterator[list[EventBus]]:
    with two_services(redis_url) as buses:
        yield buses


def test_spec_prints_a_valid_asyncapi_document_of_every_registered_service(
    fleet: list[EventBus], asyncapi_schema: dict[str, Any], tmp_path: Path
) -> None:
    # Given two services registered on Redis, and a third seen publishing an undeclared name
    users, _ = fleet
    users.publish("user.registered", {"user_id": 7, "address": {"street": "1 Main", "city": "Oslo"}})
    eventbus("publish", "payment.failed")

    # When an operator asks for the spec, from an app that imports neither service
    done = eventbus("spec", app=SHOP)
    as_yaml = eventbus("spec", "--format", "yaml", "--out", str(tmp_path / "asyncapi.yaml"))

    # Then it is a valid AsyncAPI 3.0.0 document, the same in JSON and YAML
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert asyncapi_errors(document, asyncapi_schema) == []
    assert as_yaml.returncode == 0, as_yaml.stderr
    assert "Wrote the AsyncAPI 3.0.0 document (4 channel(s)" in as_yaml.stderr
    assert yaml.safe_load((tmp_path / "asyncapi.yaml").read_text()) == document

    # And it shows every name, who sends it and which handler takes which version
    assert sorted(document["channels"]) == [
        "invoice._words_", "order.created", "payment.failed", "user.registered",
    ]
    assert document["info"]["version"] == date.today().isoformat()
    assert document["servers"]["redis"]["protocol"] == "redis"
    operations = document["operations"]
    assert {k for k, op in operations.items() if op["action"] == "send"} == {
        "users.send.user.registered", "orders.send.order.created", "shop.send.payment.failed",
    }
    welcome = operations["orders.welcome_order.receive.user.registered"]
    assert welcome["messages"] == [
        {"$ref": "#/channels/user.registered/messages/user.registered.v2"}
    ]
    assert welcome["x-celery-queue"] == "events.orders"
    # and the envelope users just published is the v2 message
    published = users.new_event(
        "user.registered", {"user_id": 8, "address": {"street": "2 Main", "city": "Oslo"}}
    )
    assert payload_validator(document, "user.registered.v2").is_valid(published.to_envelope())


def test_spec_takes_a_title_and_a_version_and_says_when_the_registry_is_empty(
    redis_url: str,
) -> None:
    # Given an empty registry
    # When an operator asks for the spec with a title and a version
    done = eventbus("spec", "--title", "Shop events", "--version", "2.4.0")

    # Then the document is printed, empty, and the exit code says nothing was found
    assert done.returncode == 1
    document = json.loads(done.stdout)
    assert document["info"]["title"] == "Shop events" and document["info"]["version"] == "2.4.0"
    assert document["channels"] == {} and "The registry is empty" in done.stderr
    # and a bad format is a usage error
    bad = eventbus("spec", "--format", "xml")
    assert bad.returncode == 2 and "Invalid value for '--format'" in bad.stderr


def test_spec_on_rabbitmq_has_the_exchange_and_each_handler_queue(
    rabbitmq_server: RabbitMQServer, redis_url: str, asyncapi_schema: dict[str, Any]
) -> None:
    # Given two services on RabbitMQ, their registry on Redis
    if rabbitmq_server.process is None or rabbitmq_server.process.poll() is not None:
        rabbitmq_server.start()
    with two_services(rabbitmq_server.url, registry_url=redis_url):
        # When an operator asks for the spec from another service's app on that broker
        env = {"CELERY_EVENTS_TEST_BROKER": rabbitmq_server.url, "CELERY_EVENTS_TEST_STATE": redis_url}
        done = eventbus("spec", app=RABBIT, env=env)

    # Then it is valid, its channels are routing keys of the events exchange
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert asyncapi_errors(document, asyncapi_schema) == []
    server = document["servers"]["amqp"]
    assert server["protocol"] == "amqp" and server["host"].startswith("127.0.0.1:")
    assert "guest:guest" not in done.stdout and "guest:***@" in server["description"]
    assert document["channels"]["user.registered"]["bindings"]["amqp"]["exchange"] == {
        "name": "celery_events", "type": "topic", "durable": True, "autoDelete": False,
        "vhost": "/",
    }
    # and each receive operation names the handler's own quorum queue, bound with its pattern
    queue = document["operations"]["orders.file_invoice.receive.invoice._words_"]["bindings"][
        "amqp"]["x-queue"]
    assert queue["name"] == "events.orders.file_invoice"
    assert queue["bindingKey"] == "invoice.#"
    assert queue["arguments"]["x-queue-type"] == "quorum"


def test_catalog_shows_the_declared_versions_and_what_each_handler_accepts(
    fleet: list[EventBus],
) -> None:
    # Given the two services registered with their declarations, nothing published yet
    # When an operator asks for the catalog
    table = eventbus("catalog")
    as_json = json.loads(eventbus("catalog", "--json").stdout)

    # Then the declaring services are publishers, with their versions and schema fingerprints
    assert table.returncode == 0, table.stderr
    events = {e["name"]: e for e in as_json["events"]}
    registered = events["user.registered"]
    assert registered["publishers"] == ["users"]
    assert [(d["service"], d["version"]) for d in registered["declarations"]] == [
        ("users", 1), ("users", 2),
    ]
    assert all(len(d["fingerprint"]) == 16 for d in registered["declarations"])
    assert registered["subscribers"][0]["versions"] == [2]
    # and the table says so in its versions and accepts columns
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["EVENT", "PUBLISHED", "BY", "VERSIONS", "HANDLER", "PATTERN", "ACCEPTS"]
    row = next(line for line in lines if line.startswith("user.registered"))
    assert row.split() == [
        "user.registered", "users", "users", "v1,", "v2", "orders.welcome_order",
        "user.registered", "v2",
    ]
    invoice = next(line for line in lines if line.startswith("invoice.#"))
    assert invoice.split()[-1] == "any"
