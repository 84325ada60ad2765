"""Trace records (``trace_records=True``) and the tree ``celery eventbus trace`` draws from
them, on the memory backend: every service of a space shares the records."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from celery import Celery

from celery_events import ConfigurationError, Event, EventBus
from celery_events.backends import memory
from celery_events.backends.base import StoreUnavailable
from celery_events.observability.records import TraceRecords
from celery_events.observability.tree import build, find, render_mermaid, render_text, to_json
from celery_events.testing import HandlerRunner

MEMORY = "memory://trace-records"


def service(name: str, **settings: object) -> EventBus:
    return EventBus(
        Celery(name, broker=MEMORY), service=name, trace_records=True, retry_jitter=False,
        retry_backoff=0.01, **settings,  # type: ignore[arg-type]
    )


@pytest.fixture
def fleet() -> Iterator[dict[str, EventBus]]:
    buses = {name: service(name) for name in ("users", "orders", "billing")}
    yield buses
    for bus in buses.values():
        bus.close()
    memory.reset()


def tree_of(bus: EventBus, event_id: str) -> dict[str, object]:
    store = bus.backend.state.traces()
    correlation = store.correlation_of(event_id)
    assert correlation is not None
    node = find(build(store.load(correlation)), event_id)
    assert node is not None
    return to_json(node)


def chain(fleet: dict[str, EventBus]) -> str:
    """users publishes user.registered; orders handles it and publishes order.created;
    billing's charge fails once then succeeds, and its audit dead-letters."""
    users, orders, billing = fleet["users"], fleet["orders"], fleet["billing"]
    failures = iter([TimeoutError("slow bank")])

    @orders.subscribe("user.registered")
    def open_cart(event: Event) -> None:
        orders.publish("order.created", {"order_id": 1})

    @billing.subscribe("order.created", max_retries=2)
    def charge(event: Event) -> None:
        error = next(failures, None)
        if error is not None:
            raise error

    @billing.subscribe("order.created", max_retries=0)
    def audit(event: Event) -> None:
        raise ValueError("no auditor")

    orders.register()
    billing.register()
    result = users.publish("user.registered", {"user_id": 7})
    runner = HandlerRunner()
    runner.work(orders)
    runner.work(billing)
    return result.event.id


def test_an_event_and_what_it_caused_make_one_tree_across_services(
    fleet: dict[str, EventBus],
) -> None:
    # Given a three-service chain, when its first event's tree is read from any service
    event_id = chain(fleet)
    tree = tree_of(fleet["billing"], event_id)

    # Then the first event has the orders delivery, which published order.created
    assert (tree["name"], tree["source"], tree["causation_id"]) == (
        "user.registered", "users", None
    )
    [cart] = tree["deliveries"]  # type: ignore[misc]
    assert (cart["handler"], cart["state"], cart["retries"]) == ("orders.open_cart", "succeeded", 0)
    assert cart["queue_wait_seconds"] >= 0 and cart["handler_seconds"] >= 0
    [created] = cart["caused"]
    assert (created["name"], created["causation_id"], created["correlation_id"]) == (
        "order.created", event_id, event_id
    )
    states = {d["handler"]: d for d in created["deliveries"]}
    charge, audit = states["billing.charge"], states["billing.audit"]
    assert (charge["state"], charge["retries"], charge["last_error"]) == (
        "succeeded", 1, "TimeoutError"
    )
    assert [r["state"] for r in charge["runs"]] == ["retried", "succeeded"]
    assert (audit["state"], audit["reason"], audit["last_error"]) == (
        "dead-lettered", "retries_exhausted", "ValueError"
    )


def test_a_published_event_not_yet_handled_is_waiting(fleet: dict[str, EventBus]) -> None:
    fleet["billing"].subscribe("order.created", name="invoice")(lambda event: None)
    fleet["billing"].register()
    event_id = fleet["orders"].publish("order.created", {"order_id": 2}).event.id

    [delivery] = tree_of(fleet["users"], event_id)["deliveries"]  # type: ignore[misc]
    assert (delivery["state"], delivery["runs"], delivery["worker"]) == ("waiting", [], None)


def test_the_text_tree_is_drawn_like_tree_and_mermaid_is_a_flowchart(
    fleet: dict[str, EventBus],
) -> None:
    event_id = chain(fleet)
    store = fleet["users"].backend.state.traces()
    roots = build(store.load(event_id))

    text = render_text(roots)
    lines = text.splitlines()
    assert lines[0] == f"user.registered {event_id} from users"
    assert lines[1].startswith("└── orders orders.open_cart: succeeded")
    assert "    └── published order.created " in lines[2]
    assert any("billing billing.charge: succeeded, retried 1 time (last error TimeoutError)"
               in line for line in lines)
    assert any("billing billing.audit: dead-lettered: retries_exhausted" in line for line in lines)

    mermaid = render_mermaid(roots)
    assert mermaid.startswith("flowchart TD\n")
    # user.registered -> open_cart -> order.created -> charge and audit
    assert mermaid.count("-->") == 4
    assert '"user.registered<br/>' in mermaid


def test_records_hold_no_event_data(fleet: dict[str, EventBus]) -> None:
    event_id = chain(fleet)
    fields = fleet["users"].backend.state.traces().load(event_id)
    assert fields and not any("user_id" in raw or "order_id" in raw for raw in fields.values())
    assert all(isinstance(json.loads(raw), dict) for raw in fields.values())


def test_records_expire_trace_ttl_after_their_last_write() -> None:
    bus = service("users", trace_ttl=0.2)
    try:
        event_id = bus.publish("user.registered", {"user_id": 1}).event.id
        store = bus.backend.state.traces()
        assert store.correlation_of(event_id) == event_id
        time.sleep(0.3)  # waiting for the clock is what is tested
        assert store.correlation_of(event_id) is None and store.load(event_id) == {}
    finally:
        bus.close()
        memory.reset()


class AwayTraces:
    def write(self, *args: object) -> None:
        raise StoreUnavailable("Connection refused")


def test_a_record_that_cannot_be_written_never_fails_a_publish_or_a_delivery(
    fleet: dict[str, EventBus], caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []
    billing = fleet["billing"]
    billing.subscribe("order.created", name="invoice")(lambda event: seen.append(event.id))
    billing.register()
    for bus in (fleet["orders"], billing):
        [records] = [m for m in bus.middleware.middleware if isinstance(m, TraceRecords)]
        records._store = AwayTraces()  # type: ignore[assignment]

    event_id = fleet["orders"].publish("order.created", {"order_id": 3}).event.id
    HandlerRunner().work(billing)

    assert seen == [event_id]
    warnings = [r for r in caplog.records if "Could not write a trace record" in r.message]
    assert len(warnings) == 2  # once per middleware (one per process in a real fleet)


def test_a_store_without_trace_records_is_a_configuration_error_before_sending() -> None:
    class NoTraces(memory.MemoryState):
        def traces(self):  # type: ignore[no-untyped-def]
            raise ConfigurationError("keeps no trace records")

    bus = EventBus(
        Celery("users", broker=MEMORY), service="users", trace_records=True,
        state=NoTraces(memory._space(MEMORY)),
    )
    try:
        with pytest.raises(ConfigurationError, match="keeps no trace records"):
            bus.publish("user.registered", {"user_id": 1})
    finally:
        bus.close()
        memory.reset()


def test_the_django_database_and_rabbitmq_without_redis_keep_no_records() -> None:
    from celery_events.backends.amqp import NoState
    from celery_events.contrib.django.state import DatabaseState

    with pytest.raises(ConfigurationError, match="Django database 'default' keeps no trace"):
        DatabaseState("default").traces()
    with pytest.raises(ConfigurationError, match="state_url='redis://"):
        NoState().traces()


def test_beside_a_store_the_bus_brings_records_stay_on_the_brokers_redis() -> None:
    import redis

    from celery_events.backends.redis.stores import LedgerState, RedisTraces

    client = redis.Redis()  # not connected: nothing is written here
    traces = LedgerState(memory.MemoryState(memory._space(MEMORY)), client, "app:").traces()
    assert isinstance(traces, RedisTraces) and traces.client is client
    assert traces.group_key("c1") == "app:trace:c1"  # shared by every service, not per service


def test_a_deferred_publish_is_recorded_as_such_and_again_when_it_is_sent() -> None:
    from celery_events import Middleware, PublishResult
    from celery_events.middleware import PublishCall, PublishNext

    later: list[tuple[PublishCall, PublishNext]] = []

    class OnCommit(Middleware):  # as Django's publish on commit defers a publish
        def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
            later.append((call, call_next))
            return PublishResult(call.event, deferred=True)

    orders = EventBus(Celery("orders", broker=MEMORY), service="orders", trace_records=True,
                      middleware=[OnCommit()])
    billing = service("billing")
    try:
        billing.subscribe("order.created", name="invoice")(lambda event: None)
        billing.register()
        # Given a publish that was deferred
        event_id = orders.publish("order.created", {"order_id": 4}).event.id
        text = render_text(build(orders.backend.state.traces().load(event_id)))
        assert "(deferred, not sent yet)" in text
        assert "(no deliveries ran yet)" in text

        # When it is sent (after the commit), its send is recorded with its delivery
        [(call, send)] = later
        send(call)
        [delivery] = tree_of(orders, event_id)["deliveries"]  # type: ignore[misc]
        assert (delivery["handler"], delivery["state"]) == ("billing.invoice", "waiting")
        assert "deferred" not in render_text(build(orders.backend.state.traces().load(event_id)))

        # And once handled, it succeeded
        HandlerRunner().work(billing)
        [delivery] = tree_of(orders, event_id)["deliveries"]  # type: ignore[misc]
        assert (delivery["handler"], delivery["state"]) == ("billing.invoice", "succeeded")
    finally:
        orders.close()
        billing.close()
        memory.reset()


def test_an_event_a_handler_put_in_the_outbox_stays_under_its_delivery_once_relayed() -> None:
    from celery_events import Middleware, PublishResult
    from celery_events.middleware import PublishCall, PublishNext

    kept: list[Event] = []

    class Outbox(Middleware):  # as Django's outbox keeps a publish for its relay
        def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
            if call.event.name == "order.created" and not kept:
                kept.append(call.event)
                return PublishResult(call.event, deferred=True)
            return call_next(call)

    users = service("users")
    orders = EventBus(Celery("orders", broker=MEMORY), service="orders", trace_records=True,
                      middleware=[Outbox()])
    try:
        @orders.subscribe("user.registered")
        def open_cart(event: Event) -> None:
            orders.publish("order.created", {"user_id": event.data["user_id"]})

        orders.register()
        # Given a handler whose publish went to the outbox
        event_id = users.publish("user.registered", {"user_id": 7}).event.id
        HandlerRunner().work(orders)
        # When the relay sends it, outside any handler
        orders.publish_event(kept[0])

        # Then the tree still hangs it under the delivery whose handler published it
        [cart] = tree_of(users, event_id)["deliveries"]  # type: ignore[misc]
        [created] = cart["caused"]
        assert (created["name"], created["deferred"]) == ("order.created", False)
    finally:
        users.close()
        orders.close()
        memory.reset()
