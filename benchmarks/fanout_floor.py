"""How little Redis can spend on a fan-out to 100: the shipped script against leaner designs of
the same publish, on the same server in the same run (issue 16's target: Redis busy at most
0.5 ms per publish to 100, a waiting delivery at most 300 B of bookkeeping beyond its message).

    python -m benchmarks --only fanout-floor

Each subscription has its own queue and service, as in ``fanout``; task-sent events on. The
designs, each a variant of the shipped script's text (``fanout._FANOUT_LUA``) fed the
arguments ``RedisFanout`` builds, so that everything but the part a design changes is the
code that ships:

- ``shipped``: today's messages (the event's body and argument repr in each) and a ledger
  entry per delivery, holding a copy of its message;
- ``reference messages``: the same script, each queue message carrying a reference to the
  event instead of its data (a body stored once per event would hold the data);
- ``+ one ledger record per event``: the ledger written once per event (one ``HSET`` of a
  compact field per delivery, one ``ZADD``, the body ``SET`` once) instead of an entry, a due
  member and their checks per delivery;
- ``+ no task-sent events``: without the one ``PUBLISH`` of the deliveries' events for Flower;
- ``bare LPUSHes``: nothing but one ``LPUSH`` per queue of a message built beforehand: no
  checks (so not all or nothing under ACLs), no ledger, no events; the least any design with a
  queue per subscription asks of Redis.

Redis busy is ``INFO commandstats`` ``cmdstat_evalsha`` µs per call. Memory is ``INFO
used_memory`` growth per waiting delivery after the chunk (queues not consumed); a design's
bookkeeping is what it holds beyond its messages alone (``bare LPUSHes`` of the same
messages). These designs are measured, not built: the receiving side (a claim that returns the
body, the sweeper rebuilding a message from a reference) is not part of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import redis
from celery import Celery

from celery_events import Event
from celery_events._messages import TaskMessage, build_messages, encode_body, redis_payload
from celery_events.backends.redis import fanout as shipped

from ._stats import Section, Series, Target, interleaved
from .fanout import server_figures

FAN_OUT = 100
DATA = {"user_id": 7, "email": "someone@example.com", "plan": "pro", "note": "x" * 200}
LEDGER_PREFIX = "celery_events:"

# Where the shipped script writes a delivery's ledger entry, and checks its ledger's keys.
_ENTRY_WRITE = """    if ledger then
      local entries, due = ledger_of(ARGV[b + 5])
      reply = redis.pcall('HSETNX', entries, task_id,
                          ledger_pack(queue, event_id, ARGV[b + 1], 0, payload))
      if failed(reply) then return rollback(reply) end
      if reply == 1 then remember('HDEL', entries, task_id) end
      reply = redis.pcall('ZADD', due, 'NX', now, task_id)
      if failed(reply) then return rollback(reply) end
      if reply == 1 then remember('ZREM', due, task_id) end
    end
  end
"""
_ENTRY_CHECK = """    if ledger then
      local entries, due = ledger_of(ARGV[b + 5])
      wrong = check(entries, 'hash', 'HSETNX', 'x', 'x') or
              check(due, 'zset', 'ZADD', 'NX', '0', 'x')
      if wrong then return wrong end
    end
"""
_WRITE_LOOP = "for ev = 1, events do\n  local at, width = starts[ev], widths[ev]\n"
# One record per event: its body once (carried here in the catalog value's place, which the
# script leaves alone without a catalog key), a compact field per delivery (queue, handler,
# delivery tag; the task id is the field), one due member for the event.
_EVENT_RECORD = """    if ledger then
      fields[#fields + 1] = task_id
      fields[#fields + 1] = table.concat({#queue, ':', queue, #ARGV[b + 1], ':', ARGV[b + 1],
                                          ARGV[b + 4]})
    end
  end
  if ledger then
    local record = ledger_prefix .. 'ledger:event:' .. event_id
    local body = ledger_prefix .. 'body:' .. event_id
    local due = ledger_prefix .. 'ledger:due'
    local wrong = check(record, 'hash', 'HSET', 'x', 'x') or
                  check(due, 'zset', 'ZADD', 'NX', '0', 'x') or
                  check(body, 'string', 'SET', 'x', 'x')
    if wrong then return rollback(wrong) end
    local reply = redis.pcall('SET', body, ARGV[at + 9], 'NX')
    if failed(reply) then return rollback(reply) end
    reply = redis.pcall('HSET', record, unpack(fields))
    if failed(reply) then return rollback(reply) end
    reply = redis.pcall('ZADD', due, 'NX', now, event_id)
    if failed(reply) then return rollback(reply) end
    fields = {}
  end
"""
_BARE = "for i = 1, #ARGV, 2 do redis.call('LPUSH', ARGV[i], ARGV[i + 1]) end return #ARGV / 2"


def _replaced(text: str, old: str, new: str) -> str:
    if old not in text:
        raise RuntimeError(f"the shipped fan-out script changed: {old.splitlines()[0]!r} not found")
    return text.replace(old, new)


def per_event_ledger_script() -> str:
    """The shipped script with one ledger record per event instead of one per delivery."""
    text = _replaced(shipped._FANOUT_LUA, _ENTRY_CHECK, "")
    text = _replaced(text, _WRITE_LOOP, "local fields = {}\n" + _WRITE_LOOP)
    return _replaced(text, _ENTRY_WRITE, _EVENT_RECORD)


@dataclass(frozen=True)
class Design:
    """What one design sends: which script (``Floor.scripts``), whether each queue message
    refers to the event instead of carrying its data, and whether task-sent events go out."""

    script: str
    reference: bool = True
    task_events: bool = True


DESIGNS = {
    "shipped": Design("shipped", reference=False),
    "reference messages": Design("shipped"),
    "+ one ledger record per event": Design("per event"),
    "+ no task-sent events": Design("per event", task_events=False),
    "bare LPUSHes": Design("bare"),
}


class Floor:
    def __init__(self, url: str, client: redis.Redis) -> None:
        self.client = client
        self.app = Celery("bench-floor", broker=url)
        self.app.conf.task_send_sent_event = True
        self.quiet = Celery("bench-floor-quiet", broker=url)
        self.quiet.conf.task_send_sent_event = False
        self.url = url
        self.scripts = {
            "shipped": shipped._FANOUT_LUA,
            "per event": per_event_ledger_script(),
            "bare": _BARE,
        }

    def fanout(self, app: Celery, script: str) -> shipped.RedisFanout:
        sender = shipped.RedisFanout(
            redis.Redis.from_url(self.url), 30.0, ledger_prefix=LEDGER_PREFIX, app=app
        )
        sender.script = sender.client.register_script(script)
        # The catalog's place carries the event's body to the per-event record (see above).
        sender.catalog_key = ""
        return sender

    def messages(self, app: Celery, reference: bool) -> tuple[list[TaskMessage], str]:
        """A fan-out's messages, with the event's data or a reference to it, and its body."""
        envelope = Event.create("bench.fanout", DATA, source="bench").to_envelope()
        head = {k: v for k, v in envelope.items() if k != "data"}
        body = encode_body(head, json.dumps(DATA))
        if reference:
            envelope = {"id": envelope["id"], "ref": f"{LEDGER_PREFIX}body:{envelope['id']}"}
            body_json = encode_body(envelope, "null")
        else:
            body_json = body
        targets = [
            (f"s{i}.handle", f"events.s{i}", f"bench.fanout → s{i}.handle", f"s{i}")
            for i in range(FAN_OUT)
        ]
        made = build_messages(app, envelope, body_json, targets, parent_id=None, root_id=None)
        return made, body

    def chunk(self, name: str, ops: int) -> dict[str, float]:
        design = DESIGNS[name]
        app = self.app if design.task_events else self.quiet
        sender = self.fanout(app, self.scripts[design.script])
        batches = [self.messages(app, design.reference) for _ in range(ops)]
        send: Callable[[list[TaskMessage], str], object]
        if design.script == "bare":
            bare = sender.script

            def send(ms: list[TaskMessage], body: str) -> object:
                args: list[str] = []
                for m in ms:
                    args += [m.queue, redis_payload(m)]
                return bare(keys=[], args=args)
        else:

            def send(ms: list[TaskMessage], body: str) -> object:
                sender.send(ms, ("", body))
                return None

        send(*batches[0])  # loaded before the measurement
        self.client.flushdb()
        before = self._server()
        for messages, body in batches[1:]:
            send(messages, body)
        after = self._server()
        queued = sum(int(self.client.llen(f"events.s{i}")) for i in range(FAN_OUT))
        if queued != FAN_OUT * (ops - 1):
            raise RuntimeError(f"{name}: {queued} deliveries queued, not {FAN_OUT * (ops - 1)}")
        self.client.flushdb()
        sender.client.close()
        return {
            "usec": (after["usec"] - before["usec"]) / (after["calls"] - before["calls"]),
            "bytes": (after["memory"] - before["memory"]) / queued,
        }

    def _server(self) -> dict[str, float]:
        return server_figures(self.client)


def run(url: str, client: redis.Redis, smoke: bool) -> list[Section]:
    floor = Floor(url, client)
    ops = 3 if smoke else 41
    repeats = 1 if smoke else 5
    plan = {design: (lambda d=design: floor.chunk(d, ops)) for design in DESIGNS}
    results = interleaved(plan, repeats)  # type: ignore[arg-type]
    section = Section(
        f"Fan-out to {FAN_OUT}: the least Redis can spend",
        f"{FAN_OUT} subscriptions, each its own queue and service; event data"
        f" {len(json.dumps(DATA))} B of JSON; {ops - 1} publishes per chunk, {repeats} chunk(s)"
        " of each design, taking turns; designs measured, not built (see benchmarks/"
        "fanout_floor.py).",
    )
    busy: dict[str, Series] = {}
    memory: dict[str, Series] = {}
    for design, rows in results.items():
        busy[design] = Series(f"{design}: Redis busy per publish", "µs", [r["usec"] for r in rows])  # type: ignore[index]
        memory[design] = Series(
            f"{design}: Redis memory per waiting delivery",
            "B",
            [r["bytes"] for r in rows],  # type: ignore[index]
        )
        section.figures += [busy[design], memory[design]]
    bare = memory["bare LPUSHes"].values
    lean = Series(
        "+ one ledger record per event: bookkeeping beyond its message",
        "B",
        [m - b for m, b in zip(memory["+ one ledger record per event"].values, bare, strict=True)],
    )
    section.figures.append(lean)
    for design in ("+ one ledger record per event", "bare LPUSHes"):
        section.targets.append(
            Target(f"{design}: Redis busy", busy[design], "≤ 500 µs", busy[design].median <= 500)
        )
    section.targets.append(Target(lean.name, lean, "≤ 300 B", lean.median <= 300))
    return [section]
