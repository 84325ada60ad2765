"""Signed registry records: publishers that require signatures believe only a record signed by
the service it is the record of, and no older one than they saw."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from celery_events import EventBus
from celery_events.backends import memory
from celery_events.errors import ConfigurationError
from celery_events.registry import Subscription
from celery_events.trust import generate_ed25519

SERVICES = ("orders", "shop", "intruder")


@pytest.fixture(autouse=True)
def _fresh_memory() -> Iterator[None]:
    memory.reset()
    yield
    memory.reset()


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """A key pair per service: private keys in keys/, public ones in trusted/."""
    (tmp_path / "keys").mkdir()
    (tmp_path / "trusted").mkdir()
    for service in SERVICES:
        private, public = generate_ed25519()
        (tmp_path / "keys" / f"{service}.k1.key").write_bytes(private)
        (tmp_path / "trusted" / f"{service}.k1.pub").write_bytes(public)
    return tmp_path


def make_bus(name: str, keys: Path | None, *, as_service: str | None = None, **settings: object) -> EventBus:
    app = Celery(name, broker="memory://", set_as_current=False)
    service = as_service or name
    if keys is not None:
        settings = {
            "signing_key": str(keys / "keys" / f"{name}.k1.key"),
            "trusted_keys": str(keys / "trusted"),
            **settings,
        }
    return EventBus(app, service=service, **settings)


def orders_bus(keys: Path | None, **settings: object) -> EventBus:
    bus = make_bus("orders", keys, **settings)
    bus.subscribe("user.registered", name="welcome")(lambda event: None)
    return bus


def stored(bus: EventBus, service: str) -> dict[str, object]:
    _, records = bus.registry.store.load()
    loaded: dict[str, object] = json.loads(records[service.encode()])
    return loaded


def test_a_service_with_a_signing_key_signs_its_record(keys: Path) -> None:
    bus = orders_bus(keys)
    bus.register()
    record = stored(bus, "orders")
    assert record["keyid"] == "k1"
    assert isinstance(record["signature"], str) and record["signature"]
    # And a publisher that requires signatures uses it
    shop = make_bus("shop", keys)
    assert [s.handler for s in shop.registry.match("user.registered")] == [bus.handlers[0].task_name]
    assert shop.registry.ignored() == []


def test_a_record_registered_by_an_impostor_is_ignored_and_logged_once(
    keys: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a publisher that requires signatures
    shop = make_bus("shop", keys)
    # When a process that is not orders registers a handler under orders' name, unsigned
    impostor = make_bus("intruder", None, as_service="orders")
    impostor.subscribe("user.registered", name="steal", queue="intruder.stolen")(lambda event: None)
    impostor.register()
    # Then no orders delivery goes to its queue, and the record is listed with its reason
    with caplog.at_level(logging.ERROR, logger="celery_events.registry"):
        assert shop.registry.match("user.registered") == []
        shop.registry.subscriptions()
        shop.registry.subscriptions()
    (ignored,) = shop.registry.ignored()
    assert ignored.service == "orders"
    assert "not signed" in ignored.reason
    assert sum("ignoring the registry record of service 'orders'" in r.message for r in caplog.records) == 1


def test_a_record_signed_with_another_services_key_is_ignored(keys: Path) -> None:
    shop = make_bus("shop", keys)
    # The intruder signs with its own (trusted) key, but the record is orders'
    impostor = make_bus("intruder", keys)
    text = impostor.registry.encode(
        "intruder", [Subscription("user.*", "orders", "x.y", "intruder.q").to_json()], 1.0
    )
    shop.registry.store.write("orders", text)
    assert shop.registry.subscriptions() == []
    (ignored,) = shop.registry.ignored()
    assert "key 'k1'" in ignored.reason or "not signed" not in ignored.reason
    assert "signature is refused" in ignored.reason


def test_an_edited_signed_record_is_ignored(keys: Path) -> None:
    bus = orders_bus(keys)
    bus.register()
    record = stored(bus, "orders")
    record["subscriptions"][0]["queue"] = "intruder.stolen"  # type: ignore[index]
    bus.registry.store.write("orders", json.dumps(record))
    shop = make_bus("shop", keys)
    assert shop.registry.subscriptions() == []
    assert "does not match its content" in shop.registry.ignored()[0].reason


def test_an_overwrite_with_no_handlers_does_not_make_a_publisher_drop_events(keys: Path) -> None:
    # Given a publisher that saw orders' valid record
    orders = orders_bus(keys)
    orders.register()
    shop = make_bus("shop", keys)
    assert len(shop.registry.match("user.registered")) == 1
    # When an impostor registers no handlers under orders' name
    make_bus("intruder", None, as_service="orders").register()
    # Then the publisher keeps delivering to orders, as its newest valid record says
    view = shop.registry.refresh()
    assert [s.queue for s in view.subscriptions] == ["events.orders"]
    (ignored,) = shop.registry.ignored()
    assert ignored.using_registered_at is not None
    # And a record deleted by hand is treated the same way
    shop.registry.store.remove("orders")
    assert [s.queue for s in shop.registry.refresh().subscriptions] == ["events.orders"]
    assert "deleted" in shop.registry.ignored()[0].reason


def test_an_older_valid_record_written_back_is_ignored(keys: Path) -> None:
    orders = orders_bus(keys)
    orders.register()
    old = orders.registry.store.load()[1][b"orders"]
    shop = make_bus("shop", keys)
    # The real orders then registers a new set (a second handler)
    orders.subscribe("order.created", name="noted")(lambda event: None)
    orders.register()
    assert len(shop.registry.subscriptions()) == 2
    # When an attacker writes the older, validly signed record back
    orders.registry.store.write("orders", old.decode())
    # Then a publisher that saw the newer one keeps it
    assert len(shop.registry.subscriptions()) == 2
    assert "older record written back" in shop.registry.ignored()[0].reason


def test_a_signed_unregister_is_believed(keys: Path) -> None:
    orders = orders_bus(keys)
    orders.register()
    shop = make_bus("shop", keys)
    assert shop.registry.subscriptions()
    orders.registry.unregister("orders")
    assert shop.registry.subscriptions() == []
    assert shop.registry.ignored() == []


def test_without_required_signatures_unsigned_records_are_used(keys: Path) -> None:
    make_bus("intruder", None, as_service="orders").register()
    orders_bus(None).register()
    shop = make_bus("shop", keys, require_signatures=False)
    assert [s.service for s in shop.registry.subscriptions()] == ["orders"]


def test_a_service_cannot_sign_another_services_record(keys: Path) -> None:
    bus = make_bus("shop", keys)
    with pytest.raises(ConfigurationError, match="signs only its own registry record"):
        bus.registry.register("orders", [])


def test_a_signed_registration_delivers_through_the_bus(keys: Path) -> None:
    # The whole path: a subscriber's signed record, a publisher requiring signatures.
    orders = orders_bus(keys)
    orders.register()
    shop = make_bus("shop", keys)
    result = shop.publish("user.registered", {"user_id": 1})
    assert [d.service for d in result.deliveries] == ["orders"]
