"""The example's services keep their committed contracts (example_project/contracts.json):
`celery -A <service app> eventbus check --against contracts.json`, as their CI runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..harness import ROOT

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "example_project"
CONTRACTS = EXAMPLE / "contracts.json"
#: Service -> the Celery app its worker runs (example_project/demo_runner/operate.py).
APPS = {"users": "users.worker", "orders": "orders.celery", "notifications": "notifications.worker"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The services' environment, with the demo's keys made in a directory of this test's own
    and a broker nobody listens on: the check against a file needs none."""
    data = tmp_path_factory.mktemp("demo-data")
    made = subprocess.run(
        [sys.executable, "-m", "demo_runner.keys", str(data / "keys")],
        cwd=EXAMPLE, env={**os.environ, "PYTHONPATH": str(EXAMPLE)},
        capture_output=True, text=True, timeout=60,
    )
    assert made.returncode == 0, made.stderr
    return {
        **os.environ,
        "PYTHONPATH": str(EXAMPLE),
        "DEMO_DATA_DIR": str(data),
        "DEMO_KEYS_DIR": str(data / "keys"),
        "CELERY_BROKER_URL": "redis://127.0.0.1:1/0",
    }


def eventbus(app: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", app, "eventbus", *args],
        cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("service", sorted(APPS))
def test_each_service_keeps_the_committed_contracts(env: dict[str, str], service: str) -> None:
    done = eventbus(APPS[service], env, "check", "--against", str(CONTRACTS))

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("No breaking changes: ")


def test_the_committed_contracts_are_what_the_code_declares(
    env: dict[str, str], tmp_path: Path
) -> None:
    # When every service writes its contracts into a fresh file
    written = tmp_path / "contracts.json"
    for app in APPS.values():
        done = eventbus(app, env, "check", "--write", str(written))
        assert done.returncode == 0, done.stderr

    # Then it is the committed file, byte for byte (rewrite it with the commands above)
    assert written.read_text() == CONTRACTS.read_text()


def test_a_breaking_change_fails_the_check(env: dict[str, str], tmp_path: Path) -> None:
    # Given contracts where user.registered's user_id was any number, and order.created
    # carried no user_id (so the notifications handler that needs it could not read it)
    contracts = json.loads(CONTRACTS.read_text())
    users = contracts["services"]["users"]["declarations"]
    registered = next(d for d in users if d["name"] == "user.registered")
    registered["schema"]["properties"]["user_id"] = {"type": "number"}
    orders = contracts["services"]["orders"]["declarations"][0]["schema"]
    del orders["properties"]["user_id"]
    orders["required"].remove("user_id")
    copy = tmp_path / "contracts.json"
    copy.write_text(json.dumps(contracts))

    # When the users service (whose code says an integer) and notifications check against it
    users_check = eventbus(APPS["users"], env, "check", "--against", str(copy))
    notifications_check = eventbus(APPS["notifications"], env, "check", "--against", str(copy))

    # Then both fail, naming the event, its version and the field
    assert users_check.returncode == 1, users_check.stdout + users_check.stderr
    assert "user.registered v1:" in users_check.stdout and "user_id" in users_check.stdout
    assert notifications_check.returncode == 1, notifications_check.stdout
    assert "notifications.order_confirmation cannot read what orders publishes" in (
        notifications_check.stdout
    )
