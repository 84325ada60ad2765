"""A worker whose bus cannot do its job exits non-zero with one error, and never says "ready".

Real `celery worker` subprocesses, one per cause. Before, each cause was logged by a signal
receiver and the worker started "ready", unregistered or misconfigured.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from ..harness import RedisServer, Worker, free_port, wait_until

SERVICE = "tests.services.checked"


def refused(worker: Worker, timeout: float = 60.0) -> str:
    """Wait for ``worker`` to exit; return its log, having checked it never got ready."""
    wait_until(
        lambda: worker.process.poll() is not None or " ready." in worker.log(),
        timeout=timeout,
        what="the worker to exit",
    )
    log = worker.log()
    assert " ready." not in log, log
    assert worker.process.wait(timeout=20) != 0
    assert log.count("the worker cannot start") == 1, log
    assert "Traceback" not in log, log
    return log


def test_a_worker_that_cannot_record_its_subscriptions_exits(
    start_worker: Callable[..., Worker], redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    # Given a registry whose Redis user may read but not write
    redis_client.execute_command(
        "ACL", "SETUSER", "reader", "reset", "on", ">pw", "%R~*", "+@all", "&*"
    )
    try:
        url = f"redis://reader:pw@127.0.0.1:{redis_server.port}/0"
        worker = start_worker(SERVICE, env={"CHECKED_REGISTRY_URL": url}, ready=False)
        log = refused(worker)
    finally:
        redis_client.execute_command("ACL", "DELUSER", "reader")
    assert "Could not record the subscriptions of service 'checked'" in log
    assert "no permissions" in log
    assert redis_client.keys("celery_events:registry:*") == []


def test_a_worker_whose_registry_is_unreachable_exits(
    start_worker: Callable[..., Worker],
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    worker = start_worker(SERVICE, env={"CHECKED_REGISTRY_URL": url}, ready=False)
    assert "Could not record the subscriptions of service 'checked'" in refused(worker)


def test_a_worker_on_another_broker_without_a_registry_exits(
    start_worker: Callable[..., Worker],
) -> None:
    worker = start_worker(SERVICE, env={"CHECKED_BROKER": "amqp://guest@127.0.0.1:1//"}, ready=False)
    assert "registry_url=" in refused(worker)


def test_a_worker_whose_backend_lacks_a_required_capability_exits(
    start_worker: Callable[..., Worker], redis_client: redis.Redis
) -> None:
    # Given a service that requires a guarantee Redis does not give (a native delivery limit)
    worker = start_worker(
        SERVICE, env={"CHECKED_REQUIRE": "atomic_fanout,native_delivery_limit"}, ready=False
    )
    # Then its worker refuses to start, naming what is missing, and records nothing
    log = refused(worker)
    assert "requires native_delivery_limit, which the redis backend does not provide" in log
    assert redis_client.keys("celery_events:registry:*") == []


def test_a_worker_whose_visibility_timeout_is_too_short_exits(
    start_worker: Callable[..., Worker],
) -> None:
    worker = start_worker(SERVICE, env={"CHECKED_VISIBILITY_TIMEOUT": "30"}, ready=False)
    assert "Raise visibility_timeout to at least" in refused(worker)


def test_a_worker_with_atomic_handlers_and_no_transaction_runner_exits(
    start_worker: Callable[..., Worker],
) -> None:
    worker = start_worker(SERVICE, env={"CHECKED_ATOMIC": "1"}, ready=False)
    assert "atomic=True" in refused(worker)


def test_a_correctly_configured_worker_still_starts_and_registers(
    start_worker: Callable[..., Worker], redis_client: redis.Redis
) -> None:
    worker = start_worker(SERVICE)
    assert "the worker cannot start" not in worker.log()
    assert redis_client.exists("celery_events:registry:checked")


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "CHECKED_BROKER",
        "CHECKED_REGISTRY_URL",
        "CHECKED_VISIBILITY_TIMEOUT",
        "CHECKED_ATOMIC",
        "CHECKED_REQUIRE",
    ):
        monkeypatch.delenv(name, raising=False)
