"""The catalog shows the versions each publisher declared and each subscriber accepts."""

from __future__ import annotations

from celery_events import Subscription
from celery_events.catalog import Catalog
from celery_events.cli import _catalog_rows
from celery_events.contracts.schemas import fingerprint_of
from celery_events.declarations import dataschema_uri
from celery_events.registry import RegisteredDeclaration

V1 = {"type": "object", "required": ["order_id"]}
V2 = {"type": "object", "required": ["order_id", "total"]}


def declared(service: str, name: str, version: int | None, schema: dict | None) -> RegisteredDeclaration:
    return RegisteredDeclaration(
        service, name, version, schema,
        dataschema=None if version is None else dataschema_uri(name, version),
    )


DECLARATIONS = [
    declared("orders", "order.created", 2, V2),
    declared("orders", "order.created", 1, V1),
    declared("billing", "invoice.sent", None, None),
]
SUBSCRIPTIONS = [
    Subscription("order.created", "mailer", "mailer.order_mail", "events.mailer", versions=(2,)),
    Subscription("order.*", "audit", "audit.orders", "events.audit"),
    Subscription("invoice.sent", "mailer", "mailer.invoice_mail", "events.mailer", versions=(3,)),
]


def catalog() -> Catalog:
    return Catalog.build(SUBSCRIPTIONS, [("shop", "order.created")], DECLARATIONS)


def test_declaring_services_are_publishers_even_before_they_published() -> None:
    # Given orders and billing declared names that only shop published so far
    by_name = {e.name: e for e in catalog().entries}

    # Then both declarers are publishers of their names, next to those seen publishing
    assert by_name["order.created"].publishers == ("orders", "shop")
    assert by_name["invoice.sent"].publishers == ("billing",)
    assert by_name["invoice.sent"].published
    # and a pattern that matches a declared name is not listed on its own
    assert [e.name for e in catalog().entries] == ["invoice.sent", "order.created"]


def test_each_entry_knows_the_versions_of_each_publisher() -> None:
    entry = {e.name: e for e in catalog().entries}["order.created"]
    assert entry.versions_of("orders") == (1, 2)
    assert entry.versions_of("shop") == ()
    assert [(d.service, d.version) for d in entry.declarations] == [("orders", 1), ("orders", 2)]


def test_json_lists_declarations_with_fingerprints_and_the_versions_subscribers_accept() -> None:
    events = {e["name"]: e for e in catalog().to_json()["events"]}
    created = events["order.created"]
    assert created["declarations"] == [
        {"service": "orders", "version": 1, "dataschema": "urn:celery-events:schema:order.created:1",
         "compatibility": "BACKWARD", "fingerprint": fingerprint_of(V1)},
        {"service": "orders", "version": 2, "dataschema": "urn:celery-events:schema:order.created:2",
         "compatibility": "BACKWARD", "fingerprint": fingerprint_of(V2)},
    ]
    subscribers = {s["handler"]: s for s in created["subscribers"]}
    assert subscribers["mailer.order_mail"]["versions"] == [2]
    # a subscriber without "versions" accepts every version
    assert "versions" not in subscribers["audit.orders"]
    assert events["invoice.sent"]["declarations"] == [
        {"service": "billing", "version": None, "dataschema": None,
         "compatibility": "BACKWARD", "fingerprint": None},
    ]


def test_the_table_shows_declared_versions_and_what_each_handler_accepts() -> None:
    assert _catalog_rows(catalog()) == [
        ("invoice.sent", "billing", "", "mailer.invoice_mail", "invoice.sent", "v3"),
        ("order.created", "orders, shop", "orders v1, v2", "audit.orders", "order.*", "any"),
        ("", "", "", "mailer.order_mail", "order.created", "v2"),
    ]


def test_graph_edges_carry_the_versions_the_subscriber_takes() -> None:
    dot = catalog().to_dot()
    assert '"orders" -> "mailer" [label="order.created v2"];' in dot
    assert '"orders" -> "audit" [label="order.created v1, v2"];' in dot
    # shop declared nothing: its edges carry the bare name
    assert '"shop" -> "mailer" [label="order.created"];' in dot
    assert '"billing" -> "mailer" [label="invoice.sent"];' in dot
    mermaid = catalog().to_mermaid()
    assert '|"order.created v2"|' in mermaid


def test_a_subscriber_that_accepts_none_of_the_declared_versions_says_so() -> None:
    only_v3 = Subscription("order.created", "late", "late.orders", "events.late", versions=(3,))
    dot = Catalog.build([only_v3], [], DECLARATIONS).to_dot()
    assert '"orders" -> "late" [label="order.created (no version it accepts)"];' in dot
