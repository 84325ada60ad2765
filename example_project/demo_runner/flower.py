"""What Flower saw: every delivery as a Celery task, with its state and retries."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import http

_EVENT_ID = re.compile(r"'id': '([^']+)'")
_EVENT_NAME = re.compile(r"'type': '([^']+)'")


@dataclass
class HandlerStats:
    states: Counter[str] = field(default_factory=Counter)
    retries: int = 0

    @property
    def total(self) -> int:
        return sum(self.states.values())


@dataclass
class Deliveries:
    """Flower's task list, read as deliveries of events to handlers."""

    by_handler: dict[str, HandlerStats]
    #: event name -> distinct event ids seen in deliveries
    events: dict[str, set[str]]

    @property
    def retries(self) -> int:
        return sum(s.retries for s in self.by_handler.values())


class Flower:
    """The demo's Flower: ``celery eventbus flower`` with its password in ``auth_file``."""

    def __init__(self, url: str, auth: tuple[str, str], auth_file: Path) -> None:
        self.url = url
        self.auth = auth
        self.auth_file = auth_file
        # Only its owner may read it; Flower reads it at start (--basic-auth-file).
        auth_file.touch(mode=0o600)
        auth_file.write_text(f"{auth[0]}:{auth[1]}\n")

    def metrics_status_without_auth(self) -> int:
        status, _ = http.call("GET", f"{self.url}/metrics", timeout=5)
        return status

    def workers_online(self) -> set[str]:
        """Workers whose heartbeats Flower receives (from its /metrics page)."""
        try:
            status, text = http.call("GET", f"{self.url}/metrics", auth=self.auth, timeout=2)
        except OSError:
            return set()
        if status != 200 or not isinstance(text, str):
            return set()
        online = re.findall(r'flower_worker_online\{worker="([^"]+)"\} 1\.0', text)
        return {name.split("@", 1)[0] for name in online}

    def tasks(self) -> dict[str, dict[str, Any]]:
        status, body = http.call("GET", f"{self.url}/api/tasks", auth=self.auth)
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"Flower's /api/tasks answered {status}: {body!r:.200}")
        return body

    def deliveries(self) -> Deliveries:
        by_handler: dict[str, HandlerStats] = {}
        events: dict[str, set[str]] = {}
        for task in self.tasks().values():
            args = str(task.get("args") or "")
            if "'specversion'" not in args:
                continue  # not a delivery: its one argument is an envelope
            # Flower names a delivery "event → handler", or by the handler's task name alone
            # when the task-sent event of a retry arrived after the retry was received.
            name = str(task.get("name") or "")
            handler = name.partition(" → ")[2] or name
            stats = by_handler.setdefault(handler, HandlerStats())
            stats.states[str(task.get("state"))] += 1
            stats.retries += int(task.get("retries") or 0)
            event_id, event_name = _EVENT_ID.search(args), _EVENT_NAME.search(args)
            if event_id and event_name:
                events.setdefault(event_name.group(1), set()).add(event_id.group(1))
        return Deliveries(dict(sorted(by_handler.items())), events)
