"""The ``backend`` fixture: every contract test runs once per backend harness.

A test that needs a guarantee not every backend gives says so with
``@pytest.mark.requires("<capability>")``; on a backend whose declared capabilities
(``celery_events.backends.capabilities_of``) lack it, the test is skipped with the
capability's name, so ``pytest -ra tests/contract`` lists what each backend does not promise.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from celery_events.backends import capabilities_of
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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires(capability, ...): skip on backends that do not declare them"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("requires")
        callspec = getattr(item, "callspec", None)
        if marker is None or callspec is None or "backend" not in callspec.params:
            continue
        unknown = [name for name in marker.args if name not in Capabilities.names()]
        if unknown:
            raise pytest.UsageError(f"{item.nodeid}: {unknown} are not capabilities")
        harness: type[BackendHarness] = callspec.params["backend"]
        backend = harness.backend_name or harness.name
        lacking = capabilities_of(backend).missing(marker.args)
        if lacking:
            item.add_marker(
                pytest.mark.skip(
                    reason=f"the {harness.name} backend does not declare {', '.join(lacking)}"
                )
            )


@pytest.fixture(autouse=True)
def _show_worker_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a failed test, print the logs of the harness's workers."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed and "backend" in request.fixturenames:
        print(request.getfixturevalue("backend").logs())
