"""The benchmarks run: ``python -m benchmarks --smoke`` end to end, sizes tiny, and against a
baseline revision (``--baseline``).

Speed is never asserted here (CI machines vary); only that every benchmark runs against a real
Redis and real workers and reports its figures and targets.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from ..harness import ROOT


def test_the_benchmarks_run_in_smoke_mode() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for title in (
        "## Machine",
        "### Publish, task-sent events off",
        "### Publish, task-sent events on",
        "### Registry matching, 10,000 subscriptions",
        "### Registry matching, 10,000 subscriptions, adversarial patterns",
        "### Publisher memory over 2,000 publishes",
        "### Worker throughput, 200 queued",
        "### End-to-end latency at 200 events/s",
    ):
        assert title in out, title
    # Each of the seven targets is reported (met or not), with its measured figure.
    for number in range(1, 8):
        assert f"| {number}. " in out, number


def test_the_comparison_with_a_baseline_runs_in_smoke_mode() -> None:
    """``--baseline HEAD``: this revision, copied apart, against the working tree, same run."""
    git = shutil.which("git")
    if git is None or subprocess.run([git, "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("--baseline takes a git revision: git or a git checkout is missing")
    result = subprocess.run(
        [
            sys.executable, "-m", "benchmarks", "--smoke", "--baseline", "HEAD",
            "--only", "baseline-publish,baseline-throughput",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "\n- baseline: HEAD (" in out and "\n- current: " in out
    for title in (
        "### Publish against the baseline, task-sent events off",
        "### Publish against the baseline, task-sent events on",
        "### Worker throughput against the baseline, 200 queued",
    ):
        assert title in out, title
    # Every figure of both versions was measured (each process checked which celery_events it
    # imported, or the run would have failed), and each gate is reported with its ratio.
    for figure in (
        "| baseline publish, 1 subscriber | ",
        "| baseline publish, 10 subscribers | ",
        "| current publish, 10 subscribers | ",
        "| raw send_task, 1 queue | ",
        "| baseline deliveries | ",
        "| current deliveries | ",
    ):
        assert figure in out, figure
    assert out.count("| gate. publish to 1, current ÷ baseline | ") == 2
    assert out.count("| gate. publish to 10, current ÷ baseline | ") == 2
    assert out.count("| 2. publish to 10 ÷ one raw send_task | ") == 2
    assert "| gate. deliveries, current ÷ baseline | " in out


def test_a_baseline_that_names_nothing_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--baseline", "no-such-revision"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--baseline 'no-such-revision' is neither a directory holding celery_events/" in (
        result.stderr
    )
