"""What Flower saw: every delivery as a Celery task, with its state and retries."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from . import http

_EVENT_ID = re.compile(r"'id': '([^']+)'")


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
    def __init__(self, url: str, auth: tuple[str, str]) -> None:
        self.url = url
        self.auth = auth

    def workers_online(self) -> set[str]:
        """Workers whose heartbeats Flower receives (from its open /metrics page)."""
        try:
            status, text = http.call("GET", f"{self.url}/metrics", timeout=2)
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
            name = str(task.get("name") or "")
            event_name, arrow, handler = name.partition(" → ")
            if not arrow:
                continue  # not a delivery
            stats = by_handler.setdefault(handler, HandlerStats())
            stats.states[str(task.get("state"))] += 1
            stats.retries += int(task.get("retries") or 0)
            found = _EVENT_ID.search(str(task.get("args") or ""))
            if found:
                events.setdefault(event_name, set()).add(found.group(1))
        return Deliveries(dict(sorted(by_handler.items())), events)
