"""The ``backend`` fixture: every contract test runs once per backend harness.

A backend that lacks a guarantee says so in its declared capabilities, and the test that needs
it is skipped with the capability's name (``requires``), so ``pytest -ra`` lists what each
backend does not promise.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from celery_events.backends.base import Capabilities

from .harness import HARNESSES, BackendHarness


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(h, id=h.name, marks=[pytest.mark.integration] if h.integration else [])
        for h in HARNESSES
    ],
)
def backend(request: pytest.FixtureRequest) -> Iterator[BackendHarness]:
    """A harness running the contract services on one backend, for the whole module."""
    harness = request.param.open(request)
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
