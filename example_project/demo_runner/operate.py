"""What an operator does from the shell, with the bus's CLI: ``celery -A app eventbus ...``."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .stopping import STOP

#: Service name -> the Celery app its worker runs (``celery -A ...``).
APPS = {
    "users": "users.worker",
    "orders": "orders.celery",
    "notifications": "notifications.worker",
}
#: Any service's app reaches the whole bus; this one starts fastest (no Django, no Flask).
CLI_APP = APPS["notifications"]


class Operator:
    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.env = env

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", CLI_APP, "eventbus", *args]

    def shown(self, *args: str) -> str:
        """The command as a user types it."""
        return shlex.join(["celery", "-A", CLI_APP, "eventbus", *args])

    def run(
        self, *args: str, ok: tuple[int, ...] = (0,), timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command; a stop signal ends it early (and raises Interrupted)."""
        command = self.command(*args)
        deadline = time.monotonic() + timeout
        with subprocess.Popen(
            command, cwd=self.cwd, env=self.env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ) as process:
            while True:
                try:
                    stdout, stderr = process.communicate(timeout=STOP.POLL)
                    break
                except subprocess.TimeoutExpired:
                    if STOP.signal is None and time.monotonic() < deadline:
                        continue
                    process.kill()
                    process.communicate()
                    STOP.check()
                    raise RuntimeError(
                        f"`{self.shown(*args)}` did not finish in {timeout:.0f}s"
                    ) from None
        # Ctrl-C in a terminal reaches this command too: say "stopping", not "it failed".
        STOP.check()
        done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
        if done.returncode not in ok:
            raise RuntimeError(
                f"`{self.shown(*args)}` exited with {done.returncode}: {done.stderr.strip()}"
            )
        return done

    def dead_letters(self) -> list[dict[str, Any]]:
        """Every dead letter of every service (exit status 1 means none)."""
        done = self.run("dead-letters", "list", "--json", ok=(0, 1))
        return list(json.loads(done.stdout)) if done.stdout.strip() else []

    def json(self, *args: str) -> Any:
        """What the command prints with ``--json``, parsed."""
        return json.loads(self.run(*args, "--json").stdout)

    def text(self, *args: str, ok: tuple[int, ...] = (0,)) -> str:
        """What the command prints, as a user would see it."""
        done = self.run(*args, ok=ok)
        return (done.stdout + done.stderr).rstrip()
