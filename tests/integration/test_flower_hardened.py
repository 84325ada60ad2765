"""`celery -A app eventbus flower`: a real Flower, real workers, a real Redis.

Credentials come from the environment or a file and never show on a command line; /metrics
needs them; the endpoints that make or steer tasks are refused; and a delivery forged through
Flower's send-task (with read-only mode turned off) is dead-lettered by a signing subscriber.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_events import EventBus
from celery_events.trust.keys import generate_ed25519, new_key_id

from ..flower_harness import PASSWORD, USER, Flower, chromium, chromium_or_skip
from ..harness import ROOT, wait_until
from .conftest import effects

BILLING = "tests.services.billing"
SIGNED_BILLING = "tests.services.signed_billing"


@pytest.fixture
def start_flower(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Flower]]:
    """Start hardened Flowers (`eventbus flower`); every one is stopped after the test."""
    started: list[Flower] = []

    def start(
        module: str = BILLING, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> Flower:
        full_env = {**os.environ, "CELERY_EVENTS_TEST_BROKER": redis_url, **(env or {})}
        server = Flower(module, full_env, tmp_path, ["--enable_events=False", *args], hardened=True)
        started.append(server)
        return server.wait_ready()

    yield start
    for server in started:
        server.stop()


def command_lines(pid: int) -> list[str]:
    """The command lines of ``pid`` and every process it started."""
    lines = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(entry.name) == pid or int(stat[1]) == pid:
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError):
            continue
    return lines


def hears_workers(flower: Flower) -> None:
    """Wait until Flower receives a worker's heartbeat: its event receiver is consuming, so
    the task events sent from now on reach it (its health check answers before that)."""
    wait_until(
        lambda: "flower_worker_online{" in flower.call("GET", "/metrics")[1],
        timeout=30, interval=0.2, what="Flower hearing a worker's heartbeat",
    )


def run_flower(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", BILLING, "eventbus", "flower", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )


def test_credentials_from_the_environment_stay_off_the_command_line(
    start_flower: Callable[..., Flower],
) -> None:
    # Given Flower started with its credentials in FLOWER_BASIC_AUTH
    flower = start_flower(env={"FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"})

    # Then they let the user in, and only them
    assert flower.call("GET", "/api/workers")[0] == 200
    assert flower.status_without_auth("/api/workers") == 401
    assert flower.status_without_auth("/tasks") == 401
    # and the password is on no command line of Flower's processes (what `ps` shows)
    lines = command_lines(flower.process.pid)
    assert lines and any("eventbus flower" in line for line in lines)
    assert not any(PASSWORD in line for line in lines)


def test_metrics_need_the_same_authentication(start_flower: Callable[..., Flower]) -> None:
    # Given a hardened Flower
    flower = start_flower(env={"FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"})

    # Then /metrics answers 401 to a stranger and the metrics to the user
    assert flower.status_without_auth("/metrics") == 401
    status, text = flower.call("GET", "/metrics")
    assert status == 200
    assert "flower_events_total" in text or "# HELP" in text
    # and the health check (it says OK) stays open for load balancers
    assert flower.status_without_auth("/healthcheck") == 200


def test_credentials_from_a_file(start_flower: Callable[..., Flower], tmp_path: Path) -> None:
    # Given a file of user:password lines (a comment and a second user too)
    secrets = tmp_path / "flower-users"
    secrets.write_text(f"# Flower's users\n{USER}:{PASSWORD}\nother:another-password\n")
    secrets.chmod(0o600)

    # When Flower is started with --basic-auth-file
    flower = start_flower(args=(f"--basic-auth-file={secrets}",))

    # Then the file's users get in, strangers do not
    assert flower.call("GET", "/api/workers")[0] == 200
    assert flower.status_without_auth("/api/workers") == 401
    assert flower.status_without_auth("/metrics") == 401
    assert not any(PASSWORD in line for line in command_lines(flower.process.pid))


@pytest.mark.parametrize(
    "secret", ["--basic-auth=user:pass", "--basic_auth=user:pass", "--oauth2_secret=s", "--cookie-secret=s"]
)
def test_a_secret_on_the_command_line_is_refused(redis_url: str, secret: str) -> None:
    # When Flower is given a secret as an argument
    done = run_flower(["--port=1", secret], {**os.environ, "CELERY_EVENTS_TEST_BROKER": redis_url})

    # Then it does not start, and says where to put it instead
    assert done.returncode == 2, done.stderr
    assert "on the command line shows the secret to every user of this machine" in done.stderr
    assert "FLOWER_BASIC_AUTH" in done.stderr


def test_flower_without_authentication_does_not_start(redis_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "CELERY_EVENTS_TEST_BROKER": redis_url}
    env.pop("FLOWER_BASIC_AUTH", None)
    done = run_flower(["--port=1"], env)
    assert done.returncode == 2
    assert "Flower would let anyone in" in done.stderr

    # nor with an unreadable or empty credentials file
    done = run_flower(["--port=1", f"--basic-auth-file={tmp_path / 'missing'}"], env)
    assert done.returncode == 2 and "Cannot read the basic auth file" in done.stderr
    (tmp_path / "bad").write_text("no colon here\n")
    done = run_flower(["--port=1", f"--basic-auth-file={tmp_path / 'bad'}"], env)
    assert done.returncode == 2 and "Line 1 of the basic auth file" in done.stderr


def delivery_args(source: str = "shop") -> dict[str, Any]:
    """What a user of Flower's send-task would post: a delivery's envelope, unsigned."""
    envelope = {
        "specversion": "1.0",
        "id": "forged-through-flower",
        "type": "order.created",
        "source": source,
        "time": "2026-01-01T00:00:00Z",
        "datacontenttype": "application/json",
        "data": {"order_id": 666, "total": "0.01"},
    }
    return {"args": [envelope], "queue": "events.billing"}


#: Every endpoint of Flower 2.2 that makes or steers a task or a worker.
STEERING_ENDPOINTS = [
    "/api/task/send-task/billing.charge",
    "/api/task/apply/billing.charge",
    "/api/task/async-apply/billing.charge",
    "/api/task/revoke/some-task-id",
    "/api/task/rate-limit/billing.charge",
    "/api/task/timeout/billing.charge",
    "/api/task/abort/some-task-id",
    "/api/worker/shutdown/celery@nowhere",
    "/api/worker/pool/restart/celery@nowhere",
    "/api/worker/pool/grow/celery@nowhere",
    "/api/worker/pool/shrink/celery@nowhere",
    "/api/worker/pool/autoscale/celery@nowhere",
    "/api/worker/queue/add-consumer/celery@nowhere",
    "/api/worker/queue/cancel-consumer/celery@nowhere",
]


def test_endpoints_that_make_or_steer_tasks_are_refused(
    start_flower: Callable[..., Flower], start_worker: Callable[..., Any], redis_client: Any,
) -> None:
    # Given a subscriber, and a hardened Flower (read-only by default)
    start_worker(BILLING)
    flower = start_flower(env={"FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"})

    # When a logged-in user posts to each endpoint that sends or controls tasks
    answers = {
        path: flower.call("POST", path, {**delivery_args(), "rate": "1/s", "soft": 1})
        for path in STEERING_ENDPOINTS
    }

    # Then Flower refuses every one, and no handler ran
    assert {path: status for path, (status, _) in answers.items()} == dict.fromkeys(
        STEERING_ENDPOINTS, 403
    )
    assert all("Read only mode is enabled" in text for _, text in answers.values())
    assert effects(redis_client) == []


@pytest.mark.skipif(
    importlib.util.find_spec("celery_events.trust.signing") is None,
    reason="waits for part signing (celery_events.trust.signing: verifying before the inbox)",
)
def test_a_delivery_forged_through_flower_is_dead_lettered_by_a_signing_subscriber(
    start_flower: Callable[..., Flower], start_worker: Callable[..., Any],
    redis_url: str, redis_client: Any, tmp_path: Path,
) -> None:
    # Given a subscriber that trusts the shop's public key (signing on)
    keys = tmp_path / "trusted"
    keys.mkdir()
    (keys / f"shop.{new_key_id()}.pub").write_bytes(generate_ed25519()[1])
    start_worker(SIGNED_BILLING, env={"CELERY_EVENTS_TEST_TRUSTED_KEYS": str(keys)})
    # and a Flower whose read-only mode was turned off explicitly
    flower = start_flower(
        env={"FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}", "FLOWER_READ_ONLY": "false"}
    )
    assert "read_only off" in flower.log()

    # When a Flower user sends a delivery to the handler's task on its queue
    status, text = flower.call("POST", "/api/task/send-task/billing.charge", delivery_args())
    assert status == 200, text

    # Then it is a dead letter invalid_signature, and the handler never ran
    bus = EventBus(Celery("billing", broker=redis_url), service="billing")
    try:
        (letter,) = wait_until(lambda: bus.dead_letters.list(), timeout=30, what="the dead letter")
    finally:
        bus.close()
    assert letter.reason == "invalid_signature"
    assert letter.handler == "billing.charge"
    assert letter.event_id == "forged-through-flower"
    assert letter.attempts == 1
    assert effects(redis_client) == []


def test_the_hardened_flower_shows_sensitive_fields_masked_in_a_browser(
    start_flower: Callable[..., Flower], start_worker: Callable[..., Any],
    publisher: EventBus, tmp_path: Path,
) -> None:
    binary = chromium_or_skip()

    # Given a publisher that declares the e-mail address of order.created sensitive
    publisher.declare("order.created", sensitive=["email"])
    start_worker(BILLING)
    flower = start_flower(env={"FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"})
    hears_workers(flower)
    (delivery,) = publisher.publish(
        "order.created", {"order_id": 7, "email": "ada@example.com"}
    ).deliveries
    wait_until(
        lambda: flower.tasks().get(delivery.task_id, {}).get("state") == "SUCCESS",
        timeout=30, interval=0.2, what="the delivery's success in Flower",
    )

    # When a logged-in user opens the delivery's page and the task list in a real browser
    budget = "--virtual-time-budget=10000"
    base = f"http://{USER}:{PASSWORD}@127.0.0.1:{flower.port}"
    page = chromium(binary, tmp_path / "profile-task", budget, "--dump-dom", f"{base}/task/{delivery.task_id}")
    rows = chromium(binary, tmp_path / "profile-list", budget, "--dump-dom", f"{base}/tasks")

    # Then the delivery is there, its e-mail address as *** and nowhere in clear
    assert "order.created → billing.charge" in page
    assert delivery.task_id in rows
    assert "***" in page
    assert "ada@example.com" not in page and "ada@example.com" not in rows
