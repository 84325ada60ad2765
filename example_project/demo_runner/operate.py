"""What an operator does from the shell, with the bus's CLI: ``celery -A app eventbus ...``."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

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

    def run(self, *args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.command(*args),
            cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=60,
        )
        if done.returncode not in ok:
            raise RuntimeError(
                f"`{self.shown(*args)}` exited with {done.returncode}: {done.stderr.strip()}"
            )
        return done

    def dead_letters(self) -> list[dict[str, Any]]:
        """Every dead letter of every service (exit status 1 means none)."""
        done = self.run("dead-letters", "list", "--json", ok=(0, 1))
        return list(json.loads(done.stdout)) if done.stdout.strip() else []

    def text(self, *args: str, ok: tuple[int, ...] = (0,)) -> str:
        """What the command prints, as a user would see it."""
        done = self.run(*args, ok=ok)
        return (done.stdout + done.stderr).rstrip()
