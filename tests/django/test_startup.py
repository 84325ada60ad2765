"""A broken CELERY_EVENTS is reported by the system checks, and stops a project's worker.

Real `python -m django check` and `celery worker` subprocesses of the test project, with a
settings module broken three ways. Before, the app config made the bus in ``ready()``, so a
bad value crashed every command with a traceback before the checks could run, and a worker
without the setting started "ready" with no handlers.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from ..harness import ROOT, Worker, wait_until

pytestmark = pytest.mark.integration

BROKEN = "tests.django.settings_misconfigured"
CASES = [
    ("missing", "celery_events.E001", "CELERY_EVENTS is missing"),
    ("bad_value", "celery_events.E002", "publish_timeout"),
    ("bad_app", "celery_events.E003", "cannot be imported"),
]


@pytest.mark.parametrize(("broken", "check_id", "text"), CASES)
def test_manage_py_check_reports_a_broken_setting_without_a_traceback(
    manage_env: dict[str, str], broken: str, check_id: str, text: str
) -> None:
    env = {**manage_env, "DJANGO_SETTINGS_MODULE": BROKEN, "CELERY_EVENTS_TEST_BROKEN": broken}
    done = subprocess.run(
        [sys.executable, "-m", "django", "check"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert check_id in output and text in output, output
    assert "Traceback" not in output, output


@pytest.mark.parametrize(("broken", "check_id", "text"), CASES)
def test_a_worker_of_a_project_with_a_broken_setting_refuses_to_start(
    start_django_worker: Callable[..., Worker], broken: str, check_id: str, text: str
) -> None:
    worker = start_django_worker(
        env={"DJANGO_SETTINGS_MODULE": BROKEN, "CELERY_EVENTS_TEST_BROKEN": broken}, ready=False
    )
    wait_until(
        lambda: worker.process.poll() is not None or " ready." in worker.log(),
        timeout=60,
        what="the worker to exit",
    )
    log = worker.log()
    assert " ready." not in log, log
    assert worker.process.wait(timeout=20) != 0
    assert log.count("the worker cannot start") == 1, log
    assert check_id in log and text in log, log
    assert "Traceback" not in log, log


def test_manage_py_check_passes_with_the_working_setting(manage_env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "django", "check"],
        cwd=ROOT, env=manage_env, capture_output=True, text=True, timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "celery_events." not in output, output
