"""The benchmarks run: ``python -m benchmarks --smoke`` end to end, sizes tiny.

Speed is never asserted here (CI machines vary); only that every benchmark runs against a real
Redis and real workers and reports its figures and targets.
"""

from __future__ import annotations

import subprocess
import sys

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
