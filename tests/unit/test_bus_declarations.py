"""Declaring a bus and its handlers: errors at import time, no broker needed."""

import pytest
from celery import Celery

from celery_events import ConfigurationError, Event, EventBus, InvalidPattern, bus_for


def make_bus(service: str = "orders", **settings: object) -> EventBus:
    return EventBus(Celery(service, broker="redis://127.0.0.1:1/0"), service=service, **settings)


def test_subscribe_registers_one_celery_task_per_handler_and_returns_the_function() -> None:
    bus = make_bus()

    def welcome(event: Event) -> None: ...

    assert bus.subscribe("user.registered")(welcome) is welcome
    bus.subscribe("user.*", name="audit")(welcome)
    assert [h.task_name for h in bus.handlers] == ["orders.welcome", "orders.audit"]
    assert "orders.welcome" in bus.app.tasks and "orders.audit" in bus.app.tasks
    task = bus.app.tasks["orders.welcome"]
    assert task.acks_late and task.reject_on_worker_lost
    assert bus.queues == ["events.orders"]


def test_a_duplicate_handler_name_is_refused_naming_both() -> None:
    bus = make_bus()

    @bus.subscribe("user.registered")
    def welcome(event: Event) -> None: ...

    with pytest.raises(ConfigurationError, match="'welcome' is already subscribed"):
        bus.subscribe("user.*")(welcome)


def test_a_handler_may_name_its_own_queue() -> None:
    bus = make_bus()
    bus.subscribe("user.*", queue="events.orders.slow", name="audit")(lambda event: None)
    assert bus.subscriptions()[0].queue == "events.orders.slow"


def test_an_invalid_pattern_fails_at_declaration() -> None:
    with pytest.raises(InvalidPattern):
        make_bus().subscribe("User.*")


def test_a_second_bus_for_one_app_is_refused() -> None:
    bus = make_bus()
    with pytest.raises(ConfigurationError, match="already has an event bus for service 'orders'"):
        EventBus(bus.app, service="billing")
    assert bus_for(bus.app) is bus


def test_an_unknown_setting_fails_when_the_bus_is_created() -> None:
    with pytest.raises(ConfigurationError, match="not a celery-events setting"):
        make_bus(max_size=3)


def test_a_rabbitmq_broker_keeps_the_registry_unless_registry_url_names_a_redis() -> None:
    own = EventBus(Celery("x", broker="amqp://guest@127.0.0.1:1//"), service="x")
    assert "registry on RabbitMQ" in own.backend.description
    redis = EventBus(
        Celery("y", broker="amqp://guest@127.0.0.1:1//"),
        service="y",
        registry_url="redis://127.0.0.1:1/0",
    )
    assert "registry and state on redis://127.0.0.1:1/0" in redis.backend.description


def test_a_lambda_needs_a_name() -> None:
    with pytest.raises(ConfigurationError, match="cannot name a handler"):
        make_bus().subscribe("user.*")(lambda event: None)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0001])
@pytest.mark.parametrize("option", ["time_limit", "retry_backoff", "retry_backoff_max"])
def test_a_handler_duration_of_nan_or_infinity_is_refused_at_declaration(
    option: str, value: float
) -> None:
    # NaN passed `value <= 0` and reached Celery's time limit or the retry countdown
    bus = make_bus()
    with pytest.raises(ConfigurationError, match="finite, positive number of seconds"):
        bus.subscribe("user.registered", **{option: value})
