"""What an operator does from the shell: read and replay dead letters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis

from celery_events.deadletters import DeadLetter, DeadLetterStore

#: Service name -> the Celery app its worker runs (``celery -A ...``).
APPS = {
    "users": "users.events",
    "orders": "orders.celery",
    "notifications": "notifications.worker",
}


class Operator:
    def __init__(self, redis_url: str, cwd: Path, env: dict[str, str]) -> None:
        self.redis_url = redis_url
        self.cwd = cwd
        self.env = env

    def dead_letters(self, service: str) -> list[DeadLetter]:
        client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        try:
            return DeadLetterStore(client, service).list(limit=None)
        finally:
            client.close()

    def replay_dead_letters(self, service: str) -> str:
        """Replay every dead letter of ``service`` with its own app; returns what was printed."""
        code = (
            f"from {APPS[service]} import bus\n"
            "for letter in bus.dead_letters.replay():\n"
            "    print(f'replayed {letter.id} ({letter.event_name} -> {letter.handler})')\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"replay failed: {done.stderr.strip()[-500:]}")
        return done.stdout
