"""Contract: who gets an event. Each matching handler gets exactly one delivery, across
services and overlapping patterns; ``*`` and ``#`` match as documented; a subscriber whose
worker is down gets its events when it starts; no subscriber means no delivery; bad input
raises in ``publish`` and sends nothing."""

from __future__ import annotations

import pytest

from celery_events import (
    EventTooLarge,
    InvalidEventData,
    InvalidEventName,
    NoSubscribersError,
)

from .harness import BackendHarness


@pytest.fixture(scope="module", autouse=True)
def _services(backend: BackendHarness) -> None:
    backend.start("alpha")
    backend.start("beta")


def test_each_matching_handler_gets_exactly_one_delivery(backend: BackendHarness) -> None:
    # Given two services whose handlers overlap: the exact name, `shop.order.*` and `shop.#`
    # When the shop publishes one event
    result = backend.publisher.publish("shop.order.placed", {"order_id": 7})

    # Then every matching handler gets one delivery of its own, on its service's queue (on
    # RabbitMQ, the handler's own queue)
    expected = {"alpha.placed", "alpha.any_order", "alpha.all_shop", "beta.placed"}
    assert sorted(d.handler for d in result.deliveries) == sorted(expected)
    assert len({d.task_id for d in result.deliveries}) == len(expected)
    assert {d.service for d in result.deliveries} == {"alpha", "beta"}
    queues = len(expected) if backend.queue_per_handler else 2
    assert len({d.queue for d in result.deliveries}) == queues
    backend.wait_until(lambda: set(backend.handled(result.event.id)) == expected)
    backend.settle("alpha", "beta")
    assert backend.handled(result.event.id) == dict.fromkeys(expected, 1)
    for effect in backend.effects(result.event.id):
        assert (effect.name, effect.data, effect.run) == ("shop.order.placed", {"order_id": 7}, 1)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("shop", {"alpha.all_shop"}),  # `#` is zero or more words
        ("shop.order", {"alpha.all_shop", "beta.one_word"}),  # `*` is exactly one
        ("shop.order.cancelled", {"alpha.any_order", "alpha.all_shop"}),
        ("shop.order.line.added", {"alpha.all_shop"}),
        ("shopping.order.placed", set()),  # words, not prefixes of letters
    ],
)
def test_wildcards_match_words(backend: BackendHarness, name: str, expected: set[str]) -> None:
    result = backend.publisher.publish(name, {})
    assert {d.handler for d in result.deliveries} == expected
    backend.settle("alpha", "beta")
    assert backend.handled(result.event.id) == dict.fromkeys(expected, 1)


def test_a_subscriber_whose_worker_is_down_gets_its_events_when_it_starts(
    backend: BackendHarness,
) -> None:
    # Given a service that recorded its subscriptions at deploy time, but runs no worker
    backend.register("gamma")

    # When an event it subscribes to is published
    result = backend.publisher.publish("stock.reserved", {"sku": "a-1"})
    assert [d.handler for d in result.deliveries] == ["gamma.reserve"]
    assert backend.handled(result.event.id) == {}

    # Then its worker handles it once it starts
    backend.start("gamma")
    backend.wait_until(lambda: backend.handled(result.event.id) == {"gamma.reserve": 1})
    backend.settle("gamma")
    assert backend.handled(result.event.id) == {"gamma.reserve": 1}


def test_no_subscriber_means_no_delivery(backend: BackendHarness) -> None:
    result = backend.publisher.publish("nobody.listens", {"x": 1})
    assert result.deliveries == () and result.deferred is False
    with pytest.raises(NoSubscribersError, match="nobody.listens"):
        backend.publisher.publish("nobody.listens", {"x": 2}, require_subscribers=True)
    backend.settle()
    assert backend.effects(result.event.id) == []
    assert [e for e in backend.effects() if e.name == "nobody.listens"] == []


def self_containing() -> dict[str, object]:
    data: dict[str, object] = {}
    data["self"] = data
    return data


def nested(depth: int) -> dict[str, object]:
    data: dict[str, object] = {}
    for _ in range(depth):
        data = {"d": data}
    return data


def test_bad_input_raises_in_publish_and_sends_nothing(backend: BackendHarness) -> None:
    # Given a name that `shop.#` matches, used by no other test
    name = f"shop.{backend.unique('bad')}.item"
    publish = backend.publisher.publish

    # When the shop publishes bad input under it, each publish raises a typed error
    with pytest.raises(InvalidEventName, match="Shop.Order"):
        publish("Shop.Order", {})
    with pytest.raises(InvalidEventData, match="levels deep"):
        publish(name, nested(65))
    with pytest.raises(InvalidEventData, match="key"):
        publish(name, {1: "x"})  # type: ignore[dict-item]
    with pytest.raises(InvalidEventData):
        publish(name, self_containing())
    with pytest.raises(InvalidEventData, match="JSON"):
        publish(name, {"price": float("nan")})
    with pytest.raises(EventTooLarge):
        publish(name, {"blob": "x" * (backend.publisher.settings.max_event_size + 1)})

    # Then nothing of it was sent: after a good event under that name, it is all there is
    good = publish(name, {"ok": True})
    backend.wait_until(lambda: backend.handled(good.event.id) == {"alpha.all_shop": 1})
    backend.settle("alpha", "beta")
    assert [(e.handler, e.data) for e in backend.effects() if e.name == name] == [
        ("alpha.all_shop", {"ok": True})
    ]
