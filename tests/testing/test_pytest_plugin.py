"""The pytest plugin is opt-in: its fixtures work when listed, and it never loads by itself."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

from ..harness import ROOT

USER_TEST = '''
from celery import Celery
from celery_events import Event, EventBus

{plugins}

bus = EventBus(Celery("shop", broker="memory://"), service="shop")
seen = []

@bus.subscribe("order.placed")
def ship(event):
    seen.append(event.data["order_id"])

def test_place_and_ship(capture_events, handler_runner):
    published = capture_events(bus)
    bus.publish("order.placed", {{"order_id": 7}})
    [run] = handler_runner.run(bus, published[0])
    assert run.status == "succeeded" and seen == [7]

def test_publish_and_work(handler_runner):
    bus.register()
    bus.publish("order.placed", {{"order_id": 8}})
    [run] = handler_runner.work(bus)
    assert (run.handler, run.status) == ("shop.ship", "succeeded") and seen[-1] == 8
'''


def run_pytest(tmp_path: Path, plugins: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_user.py").write_text(USER_TEST.format(plugins=plugins))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_the_fixtures_work_when_the_plugin_is_listed(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, 'pytest_plugins = ["celery_events.testing.pytest_plugin"]')
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_the_plugin_is_not_loaded_unless_listed(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, "")
    assert done.returncode != 0
    assert "fixture 'capture_events' not found" in done.stdout
    assert not [ep for ep in entry_points(group="pytest11") if "celery_events" in ep.value]
