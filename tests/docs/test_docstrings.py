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
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..harness import RabbitMQServer, free_port, rabbitmq_server_binary, wait_until

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


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="session")
def docs_rabbitmq() -> Iterator[tuple[str, str]]:
    """A RabbitMQ node with the management plugin: its AMQP URL and its management API's.
    Missing RabbitMQ fails in CI, skips locally."""
    binary = rabbitmq_server_binary()
    if binary is None:
        message = "rabbitmq-server is not installed (apt-get install rabbitmq-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    server = RabbitMQServer(
        binary,
        plugins=["rabbitmq_management"],
        config=[f"management.tcp.port = {port}", "management.tcp.ip = 127.0.0.1"],
    )
    server.start()
    # The plugin's listener opens a moment after the AMQP one.
    wait_until(lambda: _listening(port), timeout=30, what="the management API")
    yield server.url, f"http://guest:guest@127.0.0.1:{port}"
    server.stop()


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
        amqp, management = request.getfixturevalue("docs_rabbitmq")
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
