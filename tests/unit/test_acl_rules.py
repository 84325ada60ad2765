"""The ACL rules `celery eventbus acl` prints, as text (their effect is tested against a real
Redis in tests/integration/trust/test_acl.py)."""

from __future__ import annotations

from celery_events.acl import ServiceAccess, accesses, service_rules, setuser_line


def test_each_service_gets_its_own_keys_and_append_only_selectors() -> None:
    (orders, shop) = accesses(
        [("orders", "orders.welcome", "events.orders"), ("orders", "orders.x", "special")],
        ["orders", "shop"],
    )
    assert orders.queues == ("events.orders", "special")
    assert shop.other_queues == ("special",) and shop.subscribers == ("orders", "shop")
    rules = service_rules(shop)
    assert "~celery_events:registry:shop" in rules
    assert "~celery_events:registry:orders" not in rules
    assert "~celery_events:inbox:shop.*" in rules
    assert "~celery_events:done:shop.*" in rules and "~celery_events:done:orders.*" not in rules
    assert "(+lpush +type %W~events.* %W~special)" in rules
    assert any(r.startswith("(+hsetnx +type %W~celery_events:ledger:orders ") for r in rules)
    assert "-@dangerous" in rules


def test_a_line_quotes_what_redis_cli_would_split_or_unescape() -> None:
    line = setuser_line("orders", "pw", service_rules(ServiceAccess("orders", ("events.orders",))))
    assert line.startswith("ACL SETUSER orders reset on >pw resetkeys")
    assert '"~events.orders\\x06\\x16*"' in line
    assert '"(+lpush +type %W~events.*)"' in line


def test_glob_characters_in_a_queue_name_are_literal() -> None:
    rules = service_rules(ServiceAccess("orders", ("q[1]*",)))
    assert "~q\\[1\\]\\*" in rules
    line = setuser_line("orders", "pw", rules)
    assert '"~q\\\\[1\\\\]\\\\*"' in line
