"""Fan-out cost on the Redis server: how long one publish keeps Redis busy, and how many bytes
it sends, to 1, 10 and 100 subscriptions (targets of issue 16), against the script before.

Each subscription has a queue and a service (so a ledger) of its own; task-sent events and
the ledger are on. The fan-out is driven directly (``RedisFanout.send``, no bus: a bus's
background threads would write to Redis during the measurement), on the private Redis, which
nothing else uses. Per publish:

- Redis busy: ``INFO commandstats`` ``cmdstat_evalsha`` microseconds per call (the script's
  run), and the server's ``used_cpu_sys + used_cpu_user`` growth per publish (reading the
  request too);
- bytes sent: ``INFO stats`` ``total_net_input_bytes`` growth per publish; the event's shared
  part (its body, its argument repr, the task events' shared piece) and the per-delivery part
  ((bytes - shared) / subscriptions) are printed beside it.

The old figures come from the script of ``i16-base`` (``git show``, its ``_FANOUT_LUA`` alone),
given the arguments that code sent: every delivery's whole payload, its task event whole (one
PUBLISH each), and the ledger entry encoded by cjson in the script. Old and new take turns, chunk by chunk, on
the same server; queues and ledgers are emptied between chunks, outside the measurement.
"""

from __future__ import annotations

import ast
import json
import subprocess
import time
from collections.abc import Callable

import redis
from celery import Celery

from celery_events import Event
from celery_events._messages import (
    SentEvents,
    TaskMessage,
    build_messages,
    encode_body,
    payload_shared,
    redis_payload,
)
from celery_events.backends.redis.fanout import RedisFanout
from tests.harness import ROOT

from ._stats import Section, Series, Target, interleaved

BASE = "i16-base"
DATA = {"user_id": 7, "email": "someone@example.com", "plan": "pro", "note": "x" * 200}
FAN_OUTS = (1, 10, 100)
LEDGER_PREFIX = "celery_events:"


def old_script() -> str | None:
    """The ``_FANOUT_LUA`` of ``i16-base``'s fan-out, or None where git cannot show it."""
    try:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{BASE}:celery_events/backends/redis/fanout.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_FANOUT_LUA":
            return str(ast.literal_eval(node.value))
    return None


def old_arguments(messages: list[TaskMessage], events: SentEvents) -> list[str | int | float]:
    """What ``i16-base``'s ``RedisFanout.arguments`` sent for one event (no catalog)."""
    args: list[str | int | float] = [len(messages), "1", time.time(), messages[0].event_id]
    args += [m.queue for m in messages]
    args += [redis_payload(m) for m in messages]
    args += [m.task_id for m in messages]
    args += [m.task_name for m in messages]
    args += [f"{LEDGER_PREFIX}ledger:{m.service}" for m in messages]
    args += [f"{LEDGER_PREFIX}ledger:{m.service}:due" for m in messages]
    forward, now = events.clock_forward(), time.time()
    sent = [events.wrap(events.event(m, forward(), now), m.delivery_tag) for m in messages]
    args += [events.channel, len(messages), *sent, "", "", ""]
    return args


class Bench:
    def __init__(self, url: str, client: redis.Redis) -> None:
        self.client = client
        self.app = Celery("bench-fanout", broker=url)
        self.app.conf.task_send_sent_event = True
        self.fanout = RedisFanout(
            redis.Redis.from_url(url), 30.0, ledger_prefix=LEDGER_PREFIX, app=self.app
        )
        self.events = SentEvents(self.app, 0)
        text = old_script()
        self.old = self.fanout.client.register_script(text) if text is not None else None

    def messages(self, fan_out: int) -> list[TaskMessage]:
        envelope = Event.create("bench.fanout", DATA, source="bench").to_envelope()
        head = {k: v for k, v in envelope.items() if k != "data"}
        targets = [
            (f"s{i}.handle", f"events.s{i}", f"bench.fanout → s{i}.handle", f"s{i}")
            for i in range(fan_out)
        ]
        return build_messages(
            self.app,
            envelope,
            encode_body(head, json.dumps(DATA)),
            targets,
            parent_id=None,
            root_id=None,
        )

    def shared_bytes(self, message: TaskMessage) -> int:
        """The bytes of the pieces every delivery of the event shares, as sent once."""
        return sum(map(len, payload_shared(message.parts))) + len(
            self.events.event_piece(message.parts)
        )

    def chunk(self, fan_out: int, ops: int, old: bool) -> dict[str, float]:
        """``ops`` publishes to ``fan_out``; the server's figures per publish."""
        batches = [self.messages(fan_out) for _ in range(ops)]
        send: Callable[[list[TaskMessage]], object]
        if old:
            script = self.old
            assert script is not None

            def send(ms: list[TaskMessage]) -> object:
                return script(keys=[], args=old_arguments(ms, self.events))
        else:

            def send(ms: list[TaskMessage]) -> object:
                return self.fanout.send(ms, None)

        send(batches[0])  # the script is loaded (EVALSHA, NOSCRIPT, SCRIPT LOAD) before
        self.client.flushdb()
        before = self._server()
        started = time.perf_counter()
        for messages in batches[1:]:
            send(messages)
        elapsed = time.perf_counter() - started
        after = self._server()
        queued = sum(self.client.llen(f"events.s{i}") for i in range(fan_out))
        if queued != fan_out * (ops - 1):
            raise RuntimeError(f"{queued} deliveries queued, not {fan_out * (ops - 1)}")
        self.client.flushdb()
        count = ops - 1
        return {
            "usec": (after["usec"] - before["usec"]) / (after["calls"] - before["calls"]),
            "cpu": (after["cpu"] - before["cpu"]) / count * 1e6,
            "bytes": (after["bytes"] - before["bytes"]) / count,
            "client": elapsed / count * 1e6,
        }

    def _server(self) -> dict[str, float]:
        return server_figures(self.client)


def server_figures(client: redis.Redis) -> dict[str, float]:
    """The server's counters a chunk's figures are the growth of: the fan-out script's run
    time and calls, its CPU, the bytes it read and its memory."""
    info = client.info("all")
    evalsha = info.get("cmdstat_evalsha", {})
    return {
        "usec": float(evalsha.get("usec", 0)),
        "calls": float(evalsha.get("calls", 0)),
        "cpu": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
        "bytes": float(info["total_net_input_bytes"]),
        "memory": float(info["used_memory"]),
    }


def run(url: str, client: redis.Redis, smoke: bool) -> list[Section]:
    bench = Bench(url, client)
    repeats = 1 if smoke else 5
    sections = []
    sample = bench.messages(1)[0]
    data_bytes = len(json.dumps(DATA))
    shared = bench.shared_bytes(sample)
    for fan_out in FAN_OUTS:
        ops = 3 if smoke else max(20, 2_000 // fan_out)
        variants: dict[str, Callable[[], dict[str, float]]] = {
            "new": lambda f=fan_out, o=ops: bench.chunk(f, o, old=False),
        }
        if bench.old is not None:
            variants["old"] = lambda f=fan_out, o=ops: bench.chunk(f, o, old=True)
        results = interleaved(variants, repeats)  # type: ignore[arg-type]
        section = Section(
            f"Fan-out to {fan_out} on the Redis server",
            f"{fan_out} subscription(s), each its own queue and ledger; task events and ledger"
            f" on; event data {data_bytes} B of JSON, a queue message {len(redis_payload(sample))} B;"
            f" {ops - 1} publishes per chunk, {repeats} chunk(s) of each; old = {BASE}'s script.",
        )
        figures: dict[tuple[str, str], Series] = {}
        for name, rows in results.items():
            for key, label, unit in (
                ("usec", "Redis busy (evalsha µs per call)", "µs"),
                ("cpu", "Redis CPU per publish (used_cpu)", "µs"),
                ("bytes", "bytes sent per publish", "B"),
                ("client", "publisher's time per publish", "µs"),
            ):
                series = Series(f"{name}: {label}", unit, [row[key] for row in rows])  # type: ignore[index]
                figures[(name, key)] = series
                section.figures.append(series)
        new_bytes = figures[("new", "bytes")]
        section.figures.append(
            Series("new: shared part of the event, sent once", "B", [float(shared)])
        )
        section.figures.append(
            Series(
                "new: per-delivery part ((bytes - shared) / subscriptions)",
                "B",
                [(b - shared) / fan_out for b in new_bytes.values],
            )
        )
        if bench.old is not None:
            for key, label in (("usec", "Redis busy"), ("bytes", "bytes sent")):
                old, new = figures[("old", key)].values, figures[("new", key)].values
                section.figures.append(
                    Series(
                        f"{label}: new ÷ old", "×", [n / o for n, o in zip(new, old, strict=True)]
                    )
                )
        if fan_out == 100:
            busy = figures[("new", "usec")]
            section.targets.append(
                Target("Redis busy per publish to 100", busy, "≤ 500 µs", busy.median <= 500)
            )
            per = section.figures[-3 if bench.old is not None else -1]
            section.targets.append(
                Target(
                    "bytes per delivery beyond one copy of the event",
                    per,
                    "≤ 1,000 B",
                    per.median <= 1000,
                )
            )
        sections.append(section)
    return sections
