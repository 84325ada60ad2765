"""A publisher process of one celery-events version, driven by ``python -m benchmarks --baseline``.

Run as a script, never imported by the benchmarks themselves::

    python benchmarks/_publisher.py BROKER_URL      # PYTHONPATH=<checkout>, cwd=<checkout>

so that ``import celery_events`` resolves to the checkout the parent chose (the current one or
the baseline's: two versions of the package cannot be imported in one process). The parent
sends one JSON command a line on stdin and reads one JSON answer a line on stdout:

- ``{"op": "mode", "sent_events": bool}``: a fresh publisher app and bus, with Celery's
  ``task_send_sent_event`` set as given;
- ``{"op": "chunk", "what": "publish_1" | "publish_10" | "raw_1", "ops": N}``: N publishes to
  one subscriber, to ten, or N raw ``send_task`` calls to one queue; answers ``{"elapsed":
  seconds}`` for the N calls alone, then checks that the last queue got N messages and deletes
  what the calls wrote (both untimed);
- ``{"op": "fill", "what": "publish" | "raw", "count": N}``: queue N deliveries of
  ``bench.drain`` (or N raw ``bench.noop`` tasks) for a worker of the same version to drain;
- ``{"op": "close"}``.

It uses only what every version of celery-events since the fast path has, and only public API:
``EventBus(app, service=...)``, ``@bus.subscribe``, ``bus.register()``, ``bus.publish``,
``Event.create(...).to_envelope()``. It imports nothing from any ``benchmarks`` package, so the
baseline's own benchmarks may differ or be missing. Each version has a Redis database of its
own on the shared server, so neither sees the other's registry records, ledger or queues.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Running a script puts its own directory first on sys.path: drop it, so that no module of this
# benchmarks/ directory shadows anything, and PYTHONPATH's checkout comes first.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import redis  # noqa: E402
from celery import Celery  # noqa: E402

import celery_events  # noqa: E402
from celery_events import Event, EventBus  # noqa: E402

FANOUT = 10
DATA = {"user_id": 7, "email": "someone@example.com", "plan": "pro"}


def _handle(event: Any) -> None:
    """Subscribed handlers never run here: nobody consumes these queues in this process."""


class Publisher:
    """The publishing side of one version, against its own Redis database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = redis.Redis.from_url(url)
        # Subscriptions are recorded through each version's own API, as its workers record
        # them: one bus per subscribing service (one app each: older versions allow one bus
        # per app), registered now. The buses are kept so that nothing collects them.
        self.subscribers = [self._subscriber("one", {"handle": "bench.one"})]
        self.subscribers += [self._subscriber(f"s{i}", {"handle": "bench.ten"}) for i in range(FANOUT)]
        # What the throughput worker (benchmarks/service.py) subscribes, on events.bench.
        self.subscribers.append(
            self._subscriber("bench", {"drain": "bench.drain", "latency": "bench.latency"})
        )
        # Every key that exists now (the registry's) stays; a chunk's writes are deleted.
        self.kept = set(self.client.scan_iter(count=1000))
        self.envelope = Event.create("bench.one", DATA, source="publisher").to_envelope()
        self.app: Celery | None = None
        self.bus: EventBus | None = None
        self.feeder: tuple[Celery, EventBus] | None = None

    def _subscriber(self, service: str, handlers: dict[str, str]) -> EventBus:
        bus = EventBus(Celery(f"bench-subscriber-{service}", broker=self.url), service=service)
        for name, pattern in handlers.items():
            bus.subscribe(pattern, name=name)(_handle)
        bus.register()
        return bus

    def mode(self, sent_events: bool) -> dict[str, Any]:
        if self.bus is not None:
            self.bus.close()
        mode = "on" if sent_events else "off"
        self.app = Celery(f"bench-publisher-{mode}", broker=self.url)
        self.app.conf.task_send_sent_event = sent_events
        self.bus = EventBus(self.app, service=f"publisher-{mode}")
        return {}

    def chunk(self, what: str, ops: int) -> dict[str, Any]:
        app, bus, envelope = self.app, self.bus, self.envelope
        if app is None or bus is None:
            raise RuntimeError("send the mode command before the first chunk")
        op: Callable[[], Any]
        if what == "publish_1":
            op, queue = (lambda: bus.publish("bench.one", DATA)), "events.one"
        elif what == "publish_10":
            op, queue = (lambda: bus.publish("bench.ten", DATA)), f"events.s{FANOUT - 1}"
        elif what == "raw_1":

            def op() -> None:
                app.send_task("one.handle", args=[envelope], kwargs={}, queue="events.one")

            queue = "events.one"
        else:
            raise ValueError(f"unknown chunk {what!r}")
        started = time.perf_counter()
        for _ in range(ops):
            op()
        elapsed = time.perf_counter() - started
        queued = int(self.client.llen(queue))
        if queued != ops:
            raise RuntimeError(f"expected {ops} messages on {queue}, found {queued}")
        self._clean()
        return {"elapsed": elapsed}

    def fill(self, what: str, count: int) -> dict[str, Any]:
        if self.feeder is None:
            app = Celery("bench-feeder", broker=self.url)
            app.conf.task_send_sent_event = True
            self.feeder = app, EventBus(app, service="bench-feeder")
        app, bus = self.feeder
        if what == "publish":
            for i in range(count):
                bus.publish("bench.drain", {**DATA, "n": i})
        elif what == "raw":
            envelope = Event.create("bench.drain", DATA, source="bench-feeder").to_envelope()
            for _ in range(count):
                app.send_task("bench.noop", args=[envelope], kwargs={}, queue="bench.raw")
        else:
            raise ValueError(f"unknown fill {what!r}")
        return {}

    def _clean(self) -> None:
        """Drop the queues and ledger records a chunk wrote, whatever each version names them."""
        keys = [key for key in self.client.scan_iter(count=1000) if key not in self.kept]
        if keys:
            self.client.delete(*keys)

    def close(self) -> None:
        for bus in [self.bus, *(self.feeder[1:] if self.feeder else ()), *self.subscribers]:
            if bus is not None:
                bus.close()


def main() -> int:
    # Answers go to a private copy of stdout; anything else printed goes to stderr (the log).
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr
    publisher = Publisher(sys.argv[1])
    answers.write(json.dumps({"celery_events": celery_events.__file__}) + "\n")
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        try:
            if op == "close":
                publisher.close()
                answers.write("{}\n")
                return 0
            answer = getattr(publisher, op)(**command) if op in ("mode", "chunk", "fill") else None
            if answer is None:
                raise ValueError(f"unknown command {op!r}")
        except Exception:
            answer = {"error": traceback.format_exc()}
        answers.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
