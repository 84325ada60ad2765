"""The example project's FastAPI signup API (users/api.py), as the demo runs it: a real
uvicorn process publishing with ``await bus.apublish`` to a real Redis, and the real
notifications worker handling what it published."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ..harness import ROOT, free_port, wait_until

EXAMPLE = ROOT / "example_project"
sys.path.insert(0, str(EXAMPLE))

from demo_runner import http  # noqa: E402
from demo_runner.keys import ensure_keys  # noqa: E402

pytestmark = pytest.mark.integration


def audit_lines(data: Path) -> list[dict[str, object]]:
    path = data / "notifications.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line for line in lines if line["kind"] == "audit"]


def test_a_signup_is_apublished_and_the_notifications_worker_handles_it(
    redis_url: str, tmp_path: Path, start_worker
) -> None:
    # Given the demo's keys and settings, and the notifications worker running
    data = tmp_path / "data"
    keys = ensure_keys(data / "keys")
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(EXAMPLE), os.environ.get("PYTHONPATH")])),
        "CELERY_BROKER_URL": redis_url,
        "DEMO_DATA_DIR": str(data),
        "DEMO_KEYS_DIR": str(keys),
        **{
            f"DEMO_METRICS_PORT_{s}": str(free_port()) for s in ("USERS", "ORDERS", "NOTIFICATIONS")
        },
    }
    start_worker("notifications.worker", env=env)
    # And the signup API served by uvicorn
    port = free_port()
    log = (tmp_path / "users-api.log").open("wb")
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "users.api:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=EXAMPLE,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: api.poll() is not None or http.answers(f"{url}/health"), timeout=30)
        assert api.poll() is None, (tmp_path / "users-api.log").read_text()

        # When someone signs up over HTTP
        status, body = http.call(
            "POST", f"{url}/signups", {"email": "ada@example.com", "name": "Ada"}
        )

        # Then the API answered with the event apublish sent, to the services subscribed
        assert status == 201, body
        assert body["user"] == {"id": 1, "email": "ada@example.com", "name": "Ada"}
        assert body["event"]["name"] == "user.registered"
        assert "notifications.audit_trail" in body["event"]["deliveries"]
        # And the notifications worker handled it: signed by users, decrypted, once
        wait_until(lambda: audit_lines(data), timeout=30, what="the audit line")
        (line,) = audit_lines(data)
        assert line["event_id"] == body["event"]["id"]
        assert line["source"] == "users" and line["user_id"] == 1
        # And a second signup with the same address is refused before anything is published
        status, body = http.call(
            "POST", f"{url}/signups", {"email": "ada@example.com", "name": "A"}
        )
        assert status == 409, body
    finally:
        api.terminate()
        code = api.wait(timeout=20)
        log.close()
    # And the server stopped cleanly on SIGTERM (uvicorn exits by the signal once done), its
    # lifespan closing the bus (await bus.aclose()) without an error
    output = (tmp_path / "users-api.log").read_text()
    assert code in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert "Traceback" not in output and "ERROR" not in output
