"""The benchmarks run: ``python -m benchmarks --smoke`` end to end, sizes tiny (on Redis, and
on a private RabbitMQ node when rabbitmq-server is installed: required in CI), against a
baseline revision (``--baseline``), and the soak run (``--soak --smoke``).

Speed is never asserted here (CI machines vary); only that every benchmark runs against a real
Redis and real workers and reports its figures and targets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import redis

from benchmarks.__main__ import AGAINST_BASELINE, ORDER
from benchmarks.soak import key_patterns, tally_counts

from ..harness import ROOT, rabbitmq_server_binary

#: Every benchmark of a plain run but the RabbitMQ throughput one, tested apart below.
SMOKE = [name for name in ORDER if name not in AGAINST_BASELINE and name != "rabbitmq-throughput"]


def test_the_benchmarks_run_in_smoke_mode() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--only", ",".join(SMOKE)],
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
        "### Sentinel publish, with and without WAIT",
        "### Publish to 10 subscribers, with tracing, metrics and trace records, and without",
        "### Fan-out to 100: the least Redis can spend",
    ):
        assert title in out, title
    # The designs a fan-out to 100 is measured in, and the machine's own loop lag.
    for row in (
        "| shipped: Redis busy per publish | ",
        "| + one ledger record per event: bookkeeping beyond its message | ",
        "| bare LPUSHes: Redis busy per publish | ",
        "| idle loop, another process publishing: loop lag max | ",
        "| apublish, 100 tasks: loop lag max, less garbage collections in it | ",
        "| apublish, 100 tasks: full collections per run | ",
        "| apublish, 100 tasks, start-up heap frozen (gc.freeze()): loop lag max | ",
    ):
        assert row in out, row
    assert "| 15. tracing and metrics on, publish to 10 ÷ off | " in out
    # Each of the seven targets is reported (met or not), with its measured figure.
    for number in range(1, 8):
        assert f"| {number}. " in out, number
    # On a Sentinel topology: publish p50 with wait_for_replicas 0 and 1.
    assert "| publish to 10, WAIT 1 replica, p50 | " in out
    assert "| WAIT 1 ÷ WAIT off, publish to 10, p50 | " in out
    if rabbitmq_server_binary() is None and not os.environ.get("CI"):
        assert "(rabbitmq-* skipped: rabbitmq-server is not installed" in out
        return
    # On a private RabbitMQ node: raw send_task and the bus's publish to 1, 10 and 100, all
    # with confirms, and a worker draining deliveries against raw tasks.
    assert "### RabbitMQ publish, publisher confirms on" in out
    for row in (
        "| raw send_task with confirms, 1 queue | ",
        "| celery-events publish, 100 subscribers | ",
        "| 12. publish to 10 ÷ one raw send_task | ",
        "| 12. publish to 100 ÷ publish to 1 | ",
    ):
        assert row in out, row


def test_the_rabbitmq_throughput_benchmark_runs_in_smoke_mode() -> None:
    """A worker drains queued deliveries on RabbitMQ, and raw no-op tasks, in one run."""
    if rabbitmq_server_binary() is None and not os.environ.get("CI"):
        pytest.skip("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--only", "rabbitmq-throughput"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "### RabbitMQ worker throughput, 200 queued" in result.stdout
    assert "| 3. RabbitMQ deliveries ÷ raw no-op tasks | " in result.stdout


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


def test_the_soak_run_runs_in_smoke_mode() -> None:
    """``--soak --smoke``: 600 events through orders, billing and mail, then the inbox window
    (3 s); every criterion is reported, and all of them pass."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--soak", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "### Soak run: 600 events, inbox window 3 s" in out
    for verdict in (
        "- PASS publisher memory flat: ",
        "- PASS orders worker memory flat: ",
        "- PASS billing worker memory flat: ",
        "- PASS mail worker memory flat: ",
        "- PASS Redis memory back to baseline: ",
        "- PASS no key left behind: 0 keys beyond the baseline's ",
        "- PASS orders.reserve_stock exactly once: 600 events: 0 lost, 0 duplicated",
        "- PASS billing.charge exactly once: 600 events: 0 lost, 0 duplicated",
        "- PASS mail.send_invoice exactly once: 600 events: 0 lost, 0 duplicated",
    ):
        assert verdict in out, verdict
    assert out.rstrip().endswith("Soak: PASS")


def test_the_soak_options_need_soak() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--events", "10"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--events is an option of --soak" in result.stderr


def test_the_soak_tally_tells_lost_once_and_duplicated_apart(redis_client: redis.Redis) -> None:
    """The soak's handlers count each event's runs in 2-bit saturating BITFIELD counters; the
    summary reads them back from the bytes Redis keeps."""
    # Given events 0..9 where 3 and 9 never ran, 5 ran twice and 7 four times (saturated at 3)
    runs = {n: 1 for n in range(10)} | {3: 0, 9: 0, 5: 2, 7: 4}
    for n, times in runs.items():
        for _ in range(times):
            redis_client.execute_command(
                "BITFIELD", "runs", "OVERFLOW", "SAT", "INCRBY", "u2", f"#{n}", 1
            )
    # When the tally is read for those 10 events, and for 12 (two more that never ran)
    bits = redis_client.get("runs") or b""
    # Then lost, once and duplicated are counted apart
    assert tally_counts(bits, 10) == (2, 6, 2)
    assert tally_counts(bits, 12) == (4, 6, 2)


def test_keys_left_behind_are_grouped_by_pattern(redis_client: redis.Redis) -> None:
    # Given keys named by ids and numbers, one with a time to live
    redis_client.set("celery_events:inbox:mail.send_invoice:4f0c2a9e1b7d4c3e", "done", ex=60)
    redis_client.set("celery_events:inbox:mail.send_invoice:9a8b7c6d5e4f3a2b", "done")
    redis_client.set("celery_events:delivery:12345", "x")
    redis_client.set("celery_events:sweeper:billing", "x")
    keys = set(redis_client.scan_iter())
    # When they are grouped, Then each id becomes *, and the TTLs are counted
    assert key_patterns(redis_client, keys) == {
        "celery_events:delivery:*": (1, 0),
        "celery_events:inbox:mail.send_invoice:*": (2, 1),
        "celery_events:sweeper:billing": (1, 0),
    }
