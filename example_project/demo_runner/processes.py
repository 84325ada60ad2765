"""Child processes that are always stopped: each in its own process group, stopped as a group.

Every process is started in a new session (so Ctrl-C in the terminal reaches only the runner,
which then stops the children in order) and, on Linux, asks the kernel to send it SIGTERM if
the runner dies without cleaning up.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1
#: The signals that tell the runner to stop; held back while a child is being started, so
#: that no child can be started without being recorded (and so stopped).
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def _in_child() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass


@dataclass
class Process:
    """One started command: its name, its log file, and how to tell it is ready."""

    name: str
    argv: Sequence[str]
    log_path: Path
    ready: Callable[[], bool]
    popen: subprocess.Popen[bytes] = field(repr=False)
    started_at: float = field(default_factory=time.monotonic)
    ready_after: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exited(self) -> int | None:
        return self.popen.poll()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def group_alive(self) -> bool:
        """Whether any process of this process's group is still running."""
        self.popen.poll()  # reap an exited leader, so that its zombie does not count
        try:
            os.killpg(self.popen.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class Supervisor:
    """Starts processes and stops every one of them, whatever happens."""

    def __init__(self, cwd: Path, env: dict[str, str], log_dir: Path) -> None:
        self.cwd = cwd
        self.env = env
        self.log_dir = log_dir
        self.processes: list[Process] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        ready: Callable[[], bool] | None = None,
        env: dict[str, str] | None = None,
    ) -> Process:
        log_path = self.log_dir / f"{name}.log"
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            with open(log_path, "ab") as log:
                popen = subprocess.Popen(
                    list(argv),
                    cwd=self.cwd,
                    env={**self.env, **(env or {})},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_in_child,
                )
            process = Process(name, argv, log_path, ready or (lambda: True), popen)
            self.processes.append(process)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        return process

    def exited_ok(self, name: str) -> bool:
        """Whether the process called ``name`` has exited with status 0."""
        return any(p.name == name and p.exited() == 0 for p in self.processes)

    def forget_finished(self) -> None:
        """Drop processes that exited and left nothing behind (a one-off command).

        Their process group id could be reused by an unrelated process later, so they must
        not be signalled again.
        """
        self.processes = [
            p for p in self.processes if p.exited() is None or p.group_alive()
        ]

    def stop_all(self, keep_last: Sequence[str] = (), timeout: float = 15.0) -> list[str]:
        """Stop every process: SIGTERM to each leader, then SIGKILL to whatever group remains.

        Processes named in ``keep_last`` (the broker) are stopped after the others, so that
        workers can finish their current delivery and acknowledge it. Returns the names of
        the processes that had to be killed.
        """
        first = [p for p in self.processes if p.name not in keep_last]
        last = [p for p in self.processes if p.name in keep_last]
        killed = self._stop(first, timeout) + self._stop(last, timeout)
        self.processes.clear()
        return killed

    @staticmethod
    def _stop(processes: list[Process], timeout: float) -> list[str]:
        for process in processes:
            if process.exited() is None:
                try:
                    process.popen.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        # The leader may be gone while a child it started lingers (a pool process): the
        # group is what we started, so the group is what we make sure is gone.
        grace = time.monotonic() + 3.0
        while any(p.group_alive() for p in processes) and time.monotonic() < grace:
            time.sleep(0.05)
        killed = []
        for process in processes:
            if process.group_alive():
                killed.append(process.name)
                try:
                    os.killpg(process.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                process.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        return killed
