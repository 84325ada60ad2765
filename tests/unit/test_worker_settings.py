"""What the bus does to a worker's settings, checked without starting one."""

import pytest
from celery import Celery

from celery_events import ConfigurationError, EventBus
from celery_events.backends.redis.worker import configure_worker, needed_visibility_timeout


def make_bus(**conf: object) -> EventBus:
    app = Celery("orders", broker="redis://127.0.0.1:1/0")
    app.conf.update(conf)
    bus = EventBus(app, service="orders")
    bus.subscribe("user.*", name="slow", retry_backoff_max=900, time_limit=100)(lambda e: None)
    return bus


def test_the_worker_gets_the_screening_transport_a_long_visibility_and_prefetch_one() -> None:
    bus = make_bus()
    configure_worker(bus)
    conf = bus.app.conf
    assert conf.broker_transport == "celery_events.backends.redis.transport:Transport"
    assert conf.broker_transport_options["visibility_timeout"] == 3600
    assert conf.worker_prefetch_multiplier == 1


def test_a_longer_wait_than_an_hour_raises_the_visibility_timeout() -> None:
    bus = make_bus()
    bus.subscribe("order.*", name="patient", retry_backoff_max=7200)(lambda e: None)
    configure_worker(bus)
    assert bus.app.conf.broker_transport_options["visibility_timeout"] == 7200 + 300 + 10


def test_a_users_own_prefetch_is_kept() -> None:
    bus = make_bus(worker_prefetch_multiplier=8)
    configure_worker(bus)
    assert bus.app.conf.worker_prefetch_multiplier == 8


def test_a_visibility_timeout_shorter_than_a_retry_wait_is_refused_with_the_fix() -> None:
    bus = make_bus(broker_transport_options={"visibility_timeout": 600})
    assert needed_visibility_timeout(bus) == 900 + 100 + 10
    with pytest.raises(ConfigurationError, match="Raise visibility_timeout to at least 1010"):
        configure_worker(bus)


def test_other_brokers_are_left_alone() -> None:
    app = Celery("orders", broker="amqp://guest@127.0.0.1//")
    bus = EventBus(app, service="orders", registry_url="redis://127.0.0.1:1/0")
    bus.transport.prepare_worker(bus)
    assert not app.conf.broker_transport
