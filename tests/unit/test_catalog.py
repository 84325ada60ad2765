"""The catalog joins what publishers recorded with what subscribers registered."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from celery_events import Subscription
from celery_events._table import render_table
from celery_events.catalog import Catalog

SUBSCRIPTIONS = [
    Subscription("user.registered", "orders", "orders.welcome_order", "events.orders"),
    Subscription("user.*", "orders", "orders.audit_users", "events.orders"),
    Subscription("user.registered", "mailer", "mailer.send_welcome", "events.mailer"),
    Subscription("order.#", "mailer", "mailer.order_mail", "events.mailer"),
    Subscription("refund.requested", "billing", "billing.refund", "events.billing"),
]
PUBLISHED = [
    ("users", "user.registered"),
    ("admin", "user.registered"),
    ("users", "user.deleted"),
    ("orders", "order.created"),
    ("shop", "payment.failed"),
]


def catalog() -> Catalog:
    return Catalog.build(SUBSCRIPTIONS, PUBLISHED)


def test_published_names_list_their_publishers_and_every_matching_subscription() -> None:
    by_name = {e.name: e for e in catalog().entries}
    registered = by_name["user.registered"]
    assert registered.publishers == ("admin", "users")
    assert [s.handler for s in registered.subscriptions] == [
        "mailer.send_welcome", "orders.audit_users", "orders.welcome_order",
    ]
    assert registered.subscribers == ("mailer", "orders")
    assert [s.handler for s in by_name["user.deleted"].subscriptions] == ["orders.audit_users"]
    assert [s.handler for s in by_name["order.created"].subscriptions] == ["mailer.order_mail"]
    assert by_name["payment.failed"].subscriptions == ()


def test_patterns_nobody_published_are_listed_after_the_published_names() -> None:
    entries = catalog().entries
    assert [e.name for e in entries] == [
        "order.created", "payment.failed", "user.deleted", "user.registered", "refund.requested",
    ]
    waiting = entries[-1]
    assert not waiting.published and waiting.publishers == ()
    assert [s.handler for s in waiting.subscriptions] == ["billing.refund"]
    # a pattern that matches a published name is not listed on its own
    assert "user.*" not in {e.name for e in entries}


def test_json_lists_services_and_events() -> None:
    data = catalog().to_json()
    assert data["services"] == ["admin", "billing", "mailer", "orders", "shop", "users"]
    first = data["events"][0]
    assert first == {
        "name": "order.created",
        "published": True,
        "publishers": ["orders"],
        "subscribers": [
            {"service": "mailer", "handler": "mailer.order_mail", "pattern": "order.#",
             "queue": "events.mailer"},
        ],
    }


def test_the_graph_has_one_edge_per_publisher_subscriber_and_event() -> None:
    edges = catalog().edges()
    # orders has two handlers on user.registered: one edge per service, not per handler
    assert edges.count(("users", "orders", "user.registered")) == 1
    assert ("admin", "mailer", "user.registered") in edges
    assert ("orders", "mailer", "order.created") in edges
    assert ("shop", None, "payment.failed") in edges
    assert (None, "billing", "refund.requested") in edges
    assert len(edges) == len(set(edges)) == 8


def test_mermaid_draws_services_as_nodes_and_events_as_labelled_edges() -> None:
    text = catalog().to_mermaid()
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    ids = {line.split('"')[1]: line.split("[")[0].strip("( ") for line in lines if '["' in line}
    assert ids.pop("no subscriber") == "nobody" and ids.pop("not published yet") == "unpublished"
    assert set(ids) == {"admin", "billing", "mailer", "orders", "shop", "users"}
    assert f'    {ids["users"]} -->|"user.registered"| {ids["orders"]}' in lines
    assert f'    {ids["shop"]} -.->|"payment.failed"| nobody' in lines
    assert f'    unpublished -.->|"refund.requested"| {ids["billing"]}' in lines


def test_mermaid_escapes_hash_in_labels() -> None:
    text = Catalog.build([SUBSCRIPTIONS[3]], []).to_mermaid()
    assert '|"order.#35;"|' in text and "order.#|" not in text


def test_dot_quotes_every_name() -> None:
    text = catalog().to_dot()
    assert text.startswith("digraph events {\n") and text.endswith("}\n")
    assert '    "users" -> "orders" [label="user.registered"];' in text
    assert '    "shop" -> "_nobody" [label="payment.failed", style=dashed];' in text
    assert '    "_unpublished" -> "billing" [label="refund.requested", style=dashed];' in text


def test_an_empty_registry_gives_an_empty_catalog() -> None:
    empty = Catalog.build([], [])
    assert empty.entries == () and empty.edges() == []
    assert empty.to_mermaid() == "flowchart LR\n"


def test_tables_align_columns() -> None:
    assert render_table(["name", "n"], [["user.registered", 3], ["x", None]]).splitlines() == [
        "NAME             N",
        "user.registered  3",
        "x",
    ]


def test_graphviz_reads_the_dot_output() -> None:
    dot = shutil.which("dot")
    if dot is None:
        pytest.skip("Graphviz is not installed (apt-get install graphviz)")
    done = subprocess.run([dot, "-Tsvg"], input=catalog().to_dot(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "user.registered" in done.stdout and "no subscriber" in done.stdout
