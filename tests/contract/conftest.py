"""The ``backend`` fixture: every contract test runs once per backend harness.

A backend that lacks a guarantee says so in its declared capabilities, and the test that needs
it is skipped with the capability's name (``requires``), so ``pytest -ra`` lists what each
backend does not promise.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_events.backends.base import Capabilities

from .harness import BackendHarness, MemoryHarness, RedisHarness

#: Every backend the suite runs on; a new one is one more entry.
HARNESSES = {
    "memory": pytest.param("memory"),
    "redis": pytest.param("redis", marks=pytest.mark.integration),
}


@pytest.fixture(scope="module", params=list(HARNESSES.values()))
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackendHarness]:
    """A harness running the contract services on one backend, for the whole module."""
    harness: BackendHarness
    if request.param == "memory":
        harness = MemoryHarness()
    elif request.param == "redis":
        server = request.getfixturevalue("redis_server")
        if server.process is None or server.process.poll() is not None:
            server.start()
        harness = RedisHarness(server, Path(tmp_path_factory.mktemp("contract-logs")))
    else:  # pragma: no cover - a name in HARNESSES without a harness
        raise AssertionError(f"no harness for backend {request.param!r}")
    yield harness
    harness.close()


def requires(backend: BackendHarness, capability: str) -> None:
    """Skip the calling test, naming ``capability``, if ``backend`` does not declare it."""
    assert capability in Capabilities.names(), f"{capability!r} is not a capability"
    if not getattr(backend.capabilities, capability):
        pytest.skip(f"the {backend.name} backend does not declare {capability}")


@pytest.fixture(autouse=True)
def _show_worker_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a failed test, print the logs of the harness's workers."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed and "backend" in request.fixturenames:
        print(request.getfixturevalue("backend").logs())
