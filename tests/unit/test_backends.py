"""Backends chosen by the broker URL's scheme, capabilities as data, and the require setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from celery import Celery

from celery_events import ConfigurationError, EventBus
from celery_events.backends import backend_name, capabilities_of
from celery_events.backends.base import Capabilities

NO_REDIS = "redis://127.0.0.1:1/0"


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("redis://127.0.0.1:6379/0", "redis"),
        ("rediss://127.0.0.1:6380/0", "redis"),
        ("unix:///run/redis.sock", "redis"),
        ("redis+socket:///run/redis.sock", "redis"),
        ("amqp://guest@127.0.0.1//", "amqp"),
        ("pyamqp://guest@127.0.0.1//", "amqp"),
        ("sentinel://127.0.0.1:26379", "sentinel"),
        ("memory://", "memory"),
    ],
)
def test_the_broker_url_scheme_chooses_the_backend(url: str, name: str) -> None:
    assert backend_name(url) == name


def test_an_unknown_scheme_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigurationError, match="'redsi' has no celery-events backend. Did you mean 'redis'"):
        backend_name("redsi://127.0.0.1")


def test_each_backend_declares_what_it_guarantees() -> None:
    redis = capabilities_of("redis")
    assert redis.atomic_fanout and redis.lost_delivery_ledger and redis.queue_screening
    assert redis.dead_worker_recovery and redis.queue_status and redis.transactional_effects
    assert not redis.native_delivery_limit
    amqp = capabilities_of("amqp")
    # One message routed by RabbitMQ to every queue; the broker requeues a dead worker's
    # messages and (quorum, the default) caps deliveries; no ledger: nothing is lost between
    # queue and worker there.
    assert amqp.atomic_fanout and amqp.queue_screening and amqp.native_delivery_limit
    assert not amqp.lost_delivery_ledger
    assert amqp.dead_worker_recovery and amqp.transactional_effects  # state on Redis
    # Sentinel is the Redis backend on the primary its sentinels name.
    assert capabilities_of("sentinel") == redis
    assert amqp.queue_status
    # In one process: nothing survives it, but a publish_many is all or nothing.
    assert capabilities_of("memory") == Capabilities(atomic_batches=True)
    assert not amqp.atomic_batches  # no transaction across messages
    assert set(redis.to_json()) == set(Capabilities.names())


def test_the_bus_reports_its_backend() -> None:
    bus = EventBus(Celery("shop", broker=NO_REDIS), service="shop")
    assert bus.backend.name == "redis"
    assert bus.backend.capabilities == capabilities_of("redis")
    assert bus.transport is bus.backend.transport


def test_a_required_capability_the_backend_lacks_fails_when_the_bus_is_made() -> None:
    app = Celery("shop", broker="amqp://guest@127.0.0.1//")
    assert app.conf.broker_url  # read: the configuration, and the broker URL, are final
    with pytest.raises(ConfigurationError, match="requires lost_delivery_ledger, which the amqp"):
        EventBus(
            app,
            service="shop",
            registry_url=NO_REDIS,
            require=["atomic_fanout", "lost_delivery_ledger", "dead_worker_recovery"],
        )


def test_a_required_capability_is_checked_when_the_backend_is_made_for_a_late_config() -> None:
    # Given an app whose configuration is not loaded yet when its bus is made
    app = Celery("shop", set_as_current=False)
    bus = EventBus(app, service="shop", require=["queue_status"])
    app.conf.broker_url = "memory://"
    # Then the first use of the backend refuses, naming what is missing
    with pytest.raises(ConfigurationError, match="requires queue_status, which the memory"):
        _ = bus.backend


def test_a_redis_bus_may_require_every_capability_redis_has() -> None:
    have = [n for n, ok in capabilities_of("redis").to_json().items() if ok]
    bus = EventBus(Celery("shop", broker=NO_REDIS), service="shop", require=have)
    assert bus.backend.name == "redis"


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (["atomic_fanuot"], "not a capability. Did you mean 'atomic_fanout'"),
        ("atomic_fanout", "must be a list of capability names"),
        ([1], "must be a list of capability names"),
    ],
)
def test_a_bad_require_setting_is_refused(value: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        EventBus(Celery("shop", broker=NO_REDIS), service="shop", require=value)


def test_redis_effects_need_a_redis_state_store() -> None:
    bus = EventBus(Celery("shop", broker="memory://"), service="shop")
    with pytest.raises(ConfigurationError, match="needs a Redis state store"):
        bus.redis_effects()


def test_a_memory_broker_refuses_a_registry_elsewhere() -> None:
    bus = EventBus(Celery("shop", broker="memory://"), service="shop", registry_url=NO_REDIS)
    with pytest.raises(ConfigurationError, match="registry_url is set"):
        _ = bus.registry


def test_an_app_on_memory_never_imports_a_redis_driver() -> None:
    # Given a fresh interpreter that publishes through a memory:// bus
    script = (
        "import sys\n"
        "from celery import Celery\n"
        "from celery_events import EventBus\n"
        "bus = EventBus(Celery('x', broker='memory://'), service='x')\n"
        "bus.subscribe('a.b', name='h')(lambda event: None)\n"
        "bus.register()\n"
        "assert len(bus.publish('a.b', {}).deliveries) == 1\n"
        "print(sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    # Then neither redis-py nor the Redis backend was imported
    assert done.stdout.strip() == "[]", done.stderr


def test_the_architecture_check_passes_on_the_package_and_names_offenders(tmp_path: Path) -> None:
    check = Path(__file__).parents[2] / "scripts" / "check-architecture"
    package = Path(__file__).parents[2] / "celery_events"
    ok = subprocess.run([sys.executable, str(check), str(package)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr

    # Given a package with a driver import outside its backends and a cycle
    bad = tmp_path / "celery_events"
    (bad / "backends").mkdir(parents=True)
    (bad / "__init__.py").write_text("")
    (bad / "backends" / "__init__.py").write_text("import redis\n")
    (bad / "a.py").write_text("def f():\n    from kombu.transport import redis\n    from . import b\n")
    (bad / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n")
    done = subprocess.run([sys.executable, str(check), str(bad)], capture_output=True, text=True)
    # Then it fails, naming the driver import (not the backend's) and the cycle
    assert done.returncode == 1
    assert "celery_events/a.py:2: celery_events.a imports the broker driver kombu.transport" in done.stderr
    assert "backends" not in done.stderr.replace("outside celery_events.backends", "")
    assert "import cycle: celery_events.a -> celery_events.b -> celery_events.a" in done.stderr
