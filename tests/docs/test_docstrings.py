"""Every docstring example of the package runs, as the API reference shows it.

The reference renders the docstrings, ``>>>`` examples included, so they are samples of the
site like the pages' own. One test per module whose source holds an example: the module's
examples run in a fresh subprocess (``tests/docs/docstrings.py``: a fresh namespace per
docstring, the test Redis for ``redis://localhost:6379``, a minimal Django project for the
Django integration, a RabbitMQ node with its management API for the RabbitMQ backend's
modules), importing the ``celery_events`` of this checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "celery_events"
RUNNER = Path(__file__).with_name("docstrings.py")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(
    module_name(path) for path in PACKAGE.rglob("*.py") if ">>>" in path.read_text(encoding="utf-8")
)


def test_the_examples_are_found() -> None:
    assert "celery_events.bus" in MODULES and "celery_events.contrib.django.outbox" in MODULES


def _params() -> list[object]:
    """One test per module; the RabbitMQ backend's are marked ``rabbitmq`` (they start a node),
    so that `make test` runs them in the group that has RabbitMQ servers."""
    return [
        pytest.param(
            module,
            id=module,
            marks=[pytest.mark.rabbitmq] if module.startswith("celery_events.backends.amqp") else [],
        )
        for module in MODULES
    ]


@pytest.mark.parametrize("module", _params())
def test_docstring_examples(module: str, redis_url: str, request: pytest.FixtureRequest) -> None:
    servers: dict[str, str] = {}
    if module.startswith("celery_events.backends.amqp"):
        node = request.getfixturevalue("managed_rabbitmq")  # tests/rabbitmq_managed.py
        amqp, management = node.url, node.management_url
        servers = {"CELERY_EVENTS_DOCS_AMQP": amqp, "CELERY_EVENTS_DOCS_MANAGEMENT": management}
    env = {
        **os.environ,
        **servers,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "CELERY_EVENTS_DOCS_REDIS": redis_url,
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    process = subprocess.run(
        [sys.executable, str(RUNNER), module],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if process.returncode != 0:
        pytest.fail(f"{module}'s examples failed:\n{process.stdout}\n{process.stderr}", pytrace=False)
