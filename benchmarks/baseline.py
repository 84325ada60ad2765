"""``--baseline REV``: publish cost and worker throughput against an older celery-events, same run.

Two versions of a package cannot be imported in one process, so each version runs in processes
of its own, started with the same Python interpreter and ``PYTHONPATH`` (and ``cwd``) set to its
checkout, which each process checks (``celery_events.__file__``):

- the baseline is a throwaway copy of ``celery_events/`` at REV (``git archive``, removed at the
  end), or a directory holding a checkout, used as it is;
- each version has a Redis database of its own on the same private server (the current code 1,
  the baseline 2), so neither reads the other's registry records, ledger or queues.

Publish: a publisher process per version (``benchmarks/_publisher.py``, which relies on nothing
but each version's public API), driven over a pipe. Each records its subscriptions with its own
``bus.register()`` (one subscribing service, or ten on ten queues), then the parent has them run
chunks of publishes in turn, old and new alternating chunk by chunk in a rotating order, with
raw ``send_task`` (in the current process) in the same rotation: the same chunk sizes, repeats
and checks as the publish benchmark. Throughput: for each version, its own publisher queues the
deliveries and a worker of that version drains them (``celery -A benchmarks.service worker``,
the current ``benchmarks/service.py`` for both, copied apart), the versions and raw no-op tasks
alternating run by run. Ratios are "current ÷ baseline" per repeat; the 5% targets are reported,
never asserted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import redis

from tests.harness import ROOT

from ._keys import SOURCE_KEY
from ._stats import Section, Series, Target, chunked, interleaved, ratios
from .workers import drain_queued

HERE = Path(__file__).resolve().parent
#: The databases of the shared server each version uses.
DATABASES = {"current": 1, "baseline": 2, "raw": 3}


class BaselineError(Exception):
    """REV names neither a git revision of this repository nor a checkout of celery-events."""


@dataclass(frozen=True)
class Checkout:
    """One version of celery-events: ``root`` holds its ``celery_events/`` package."""

    name: str
    root: Path
    described: str

    def env(self) -> dict[str, str]:
        """The environment a process of this version runs with (on top of ``os.environ``)."""
        inherited = os.environ.get("PYTHONPATH")
        return {"PYTHONPATH": str(self.root) + (os.pathsep + inherited if inherited else "")}

    def check(self, module_file: str, who: str) -> None:
        """Refuse to measure a process that imported some other celery_events than ours."""
        expected = (self.root / "celery_events").resolve()
        if Path(module_file).resolve().parent != expected:
            raise RuntimeError(
                f"The {who} of the {self.name} code imported celery_events from {module_file},"
                f" not from {expected}: its PYTHONPATH did not take precedence."
            )


def _git(*args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
    )
    if result.returncode:
        raise BaselineError(result.stderr.strip() or f"git {' '.join(args)} failed")
    return result.stdout.strip()


def current() -> Checkout:
    """This repository's working tree, as imported by the benchmarks themselves."""
    try:
        described = _git("rev-parse", "--short", "HEAD")
        if _git("status", "--porcelain", "--", "celery_events"):
            described += " + uncommitted changes in celery_events/"
    except (BaselineError, OSError):
        described = "the working tree (not a git checkout)"
    return Checkout("current", ROOT, described)


@contextlib.contextmanager
def baseline(rev: str) -> Iterator[Checkout]:
    """The baseline at ``rev``: a directory holding ``celery_events/``, or a git revision."""
    path = Path(rev)
    if path.is_dir():
        if not (path / "celery_events" / "__init__.py").is_file():
            raise BaselineError(
                f"--baseline {rev!r} is a directory without celery_events/__init__.py; pass the"
                " root of a celery-events checkout, or a git revision."
            )
        yield Checkout("baseline", path.resolve(), f"the checkout in {path.resolve()}")
        return
    try:
        commit = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except (BaselineError, OSError):
        raise BaselineError(
            f"--baseline {rev!r} is neither a directory holding celery_events/ nor a git"
            f" revision of {ROOT}; pass a branch, a tag, a commit or a checkout's path."
        ) from None
    short = _git("rev-parse", "--short", commit)
    described = short if rev.startswith(short[:7]) else f"{rev} ({short})"
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "celery_events"],
        capture_output=True,
        check=True,
    ).stdout
    root = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, filter="data")
            else:  # Python < 3.10.12 / 3.11.4: our own archive, from our own repository
                tar.extractall(root)  # noqa: S202
        yield Checkout("baseline", root, described)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + f"/{DATABASES[name]}"


def _fresh(url: str, name: str) -> tuple[str, redis.Redis]:
    """The URL of one version's database, and a client on it, emptied."""
    db_url = _database(url, name)
    client = redis.Redis.from_url(db_url, socket_timeout=30)
    client.flushdb()
    return db_url, client


class PublisherProcess:
    """``benchmarks/_publisher.py`` run for one version, driven one command at a time."""

    def __init__(self, checkout: Checkout, url: str, log_dir: Path) -> None:
        self.checkout = checkout
        self.log_path = log_dir / f"publisher-{checkout.name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in close)
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "_publisher.py"), url],
            cwd=checkout.root,
            env=dict(os.environ, **checkout.env()),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
        )
        try:
            checkout.check(self._answer()["celery_events"], "publisher")
        except BaseException:
            self.close()
            raise

    def _answer(self) -> dict[str, Any]:
        stdout: IO[str] | None = self.process.stdout
        line = stdout.readline() if stdout is not None else ""
        if not line:
            self.process.wait(timeout=10)
            raise RuntimeError(
                f"the {self.checkout.name} publisher exited:\n{self.log_path.read_text()[-3000:]}"
            )
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the {self.checkout.name} publisher failed:\n{answer['error']}")
        return answer

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def chunk(self, what: str) -> Callable[[int], float]:
        return lambda ops: float(self.call("chunk", what=what, ops=ops)["elapsed"])

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self.call("close")
                self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=10)
            self._log.close()


@contextlib.contextmanager
def _publishers(url: str, versions: list[Checkout]) -> Iterator[tuple[PublisherProcess, ...]]:
    """A publisher process per version, each on its own emptied database; closed at the end."""
    with tempfile.TemporaryDirectory(prefix="bench-publishers-") as logs:
        started: list[PublisherProcess] = []
        try:
            for checkout in versions:
                db_url, _ = _fresh(url, checkout.name)
                started.append(PublisherProcess(checkout, db_url, Path(logs)))
            yield tuple(started)
        finally:
            for process in started:
                process.close()


def _gate(name: str, series: Series, *, at_most: bool) -> Target:
    goal = "≤ 1.05×" if at_most else "≥ 0.95×"
    met = series.median <= 1.05 if at_most else series.median >= 0.95
    return Target("gate. " + name, series, goal, met)


def publish_mode(
    old: Checkout, url: str, *, sent_events: bool, smoke: bool
) -> Section:
    mode = "on" if sent_events else "off"
    # Raw send_task runs in a process of its own: run in the current version's process, it
    # made that process's publishes about 80 µs slower than the same code in the other one
    # (measured against itself, --baseline HEAD: 1.5x), which read as a regression.
    raw_checkout = dataclasses.replace(current(), name="raw")
    with _publishers(url, [current(), old, raw_checkout]) as (new_side, old_side, raw_side):
        for side in (new_side, old_side, raw_side):
            side.call("mode", sent_events=sent_events)
        # Operations per chunk as in the publish benchmark: about 10 ms of work each. Old and
        # new sit next to each other, so that in most rotations they run back to back.
        plan = {
            "raw send_task, 1 queue": (raw_side.chunk("raw_1"), 30),
            "current publish, 1 subscriber": (new_side.chunk("publish_1"), 60),
            "baseline publish, 1 subscriber": (old_side.chunk("publish_1"), 60),
            "current publish, 10 subscribers": (new_side.chunk("publish_10"), 30),
            "baseline publish, 10 subscribers": (old_side.chunk("publish_10"), 30),
        }
        for run, _ in plan.values():  # warm-up: connections, scripts, caches
            run(20)
        repeats, chunks = (2, 2) if smoke else (15, 25)
        results = chunked(plan, repeats, chunks)
    raw1, new1, old1, new10, old10 = results.values()
    section = Section(
        title=f"Publish against the baseline, task-sent events {mode}",
        setup=(
            f"Time per published event (`task_send_sent_event = {sent_events}`), queues not"
            f" consumed, each version in a publisher process of its own; baseline: {old.described}."
            " Old and new take turns chunk by chunk, with raw `send_task` in the same rotation."
        ),
        figures=[Series(name, "µs", values) for name, values in results.items()],
    )
    section.figures.append(
        Series("baseline: publish to 10 ÷ one raw send_task", "×", ratios(old10, raw1))
    )
    to1 = Series("publish to 1, current ÷ baseline", "×", ratios(new1, old1))
    to10 = Series("publish to 10, current ÷ baseline", "×", ratios(new10, old10))
    raw = Series("publish to 10 ÷ one raw send_task", "×", ratios(new10, raw1))
    section.targets = [
        _gate(to1.name, to1, at_most=True),
        _gate(to10.name, to10, at_most=True),
        Target("2. " + raw.name, raw, "≤ 1.0×", raw.median <= 1.0),
    ]
    return section


def publish(old: Checkout, url: str, client: redis.Redis, smoke: bool) -> list[Section]:
    return [
        publish_mode(old, url, sent_events=False, smoke=smoke),
        publish_mode(old, url, sent_events=True, smoke=smoke),
    ]


def _service(directory: Path) -> Path:
    """A directory whose ``benchmarks`` package holds the current service module and no more.

    Workers of both versions import it (it is their ``cwd``): the baseline's own benchmarks
    may lack what the throughput run needs, and both versions then run the same tasks.
    """
    package = directory / "benchmarks"
    package.mkdir()
    for name in ("__init__.py", "_keys.py", "service.py"):
        shutil.copy(HERE / name, package / name)
    return directory


def throughput(old: Checkout, url: str, client: redis.Redis, smoke: bool) -> list[Section]:
    count = 200 if smoke else 10_000
    new = current()
    with tempfile.TemporaryDirectory(prefix="bench-service-") as service_dir, _publishers(
        url, [new, old]
    ) as (new_side, old_side):
        cwd = _service(Path(service_dir))
        clients = {
            checkout.name: redis.Redis.from_url(_database(url, checkout.name), socket_timeout=30)
            for checkout in (new, old)
        }

        def drain(checkout: Checkout, side: PublisherProcess, what: str) -> Callable[[], float]:
            def run() -> float:
                db = clients[checkout.name]
                rate = drain_queued(
                    _database(url, checkout.name),
                    db,
                    count,
                    lambda: side.call("fill", what=what, count=count),
                    env=checkout.env(),
                    cwd=cwd,
                )
                source = db.get(SOURCE_KEY)
                if not isinstance(source, bytes):
                    raise RuntimeError(f"the {checkout.name} worker did not record its celery_events")
                checkout.check(source.decode(), "worker")
                return rate

            return run

        results = interleaved(
            {
                "raw no-op tasks (current worker)": drain(new, new_side, "raw"),
                "current deliveries": drain(new, new_side, "publish"),
                "baseline deliveries": drain(old, old_side, "publish"),
            },
            repeats=1 if smoke else 4,
        )
        for db in clients.values():
            db.close()
    raw_rates, new_rates, old_rates = results.values()
    section = Section(
        title=f"Worker throughput against the baseline, {count:,} queued",
        setup=(
            "Tasks per second of one worker process (`-c 1 -E`, prefork) draining a full queue"
            " that a publisher of the same version filled; each version's worker runs its own"
            f" celery_events with the same service module; baseline: {old.described}."
        ),
        figures=[
            Series("raw no-op tasks (current worker)", "tasks/s", raw_rates),
            Series("current deliveries", "tasks/s", new_rates),
            Series("baseline deliveries", "tasks/s", old_rates),
            Series("baseline deliveries ÷ raw no-op tasks", "×", ratios(old_rates, raw_rates)),
        ],
    )
    ratio = Series("deliveries, current ÷ baseline", "×", ratios(new_rates, old_rates))
    raw = Series("deliveries ÷ raw no-op tasks", "×", ratios(new_rates, raw_rates))
    section.targets = [
        _gate(ratio.name, ratio, at_most=False),
        Target("3. " + raw.name, raw, "≥ 0.85×", raw.median >= 0.85),
    ]
    return [section]
