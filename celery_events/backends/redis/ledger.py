"""The lost-delivery ledger of each service, in Redis.

``ledger:{service}`` and ``ledger:{service}:due`` (under ``{key_prefix}``) hold every delivery
from publish until it is handled or dead-lettered, with what it takes to send it again, scored
by its last sign of life. Written atomically with the fan-out (``fanout.py``), it is how a
message that vanished between the queue and a worker (a worker killed just after taking it, a
retry whose re-publish failed, Redis restarting at the wrong moment) is found and sent again
by the sweeper (``worker.py``). The inbox's scripts (``inbox.py``) settle an entry with
:data:`SETTLE_LUA` once its delivery is handled.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from ... import _plainjson
from ..base import Claim, SweepResult
from ..base import Inbox as InboxRole
from .client import run_script, store_errors

__all__ = [
    "LEDGER_LUA",
    "Ledger",
    "LedgerInbox",
    "SETTLE_LUA",
    "SweepResult",
    "ledger_entry",
    "read_ledger_entry",
]

#: Lua defining ``settle(ledger, due, task_id)``: drops a delivery's ledger entry (it was
#: handled, found already handled, or given up). Every script that settles one embeds it, so
#: that what an entry holds beside its hash field and due member is released with it.
SETTLE_LUA = """
local function settle(ledger, due, task_id)
  redis.call('HDEL', ledger, task_id)
  redis.call('ZREM', due, task_id)
end
"""

# A ledger entry (what ledger_entry makes) is "\1", then the queue key, the event id and the
# handler as "<bytes>:<text>", the redelivery count as "<digits>:", and the whole message: the
# fan-out's script joins it (a copy of strings, no encoding), where encoding JSON with cjson
# escaped the message again for every delivery. Entries written before this format are JSON
# ({"q", "m", "e", "h", "r"}) and are still read (a rolling upgrade); a resend rewrites them.
LEDGER_LUA = """
local function ledger_pack(q, e, h, r, m)
  return table.concat({'\\1', #q, ':', q, #e, ':', e, #h, ':', h, r, ':', m})
end
local function ledger_read(raw)
  if string.byte(raw, 1) == 1 then
    local entry, pos = {}, 2
    for _, name in ipairs({'q', 'e', 'h'}) do
      local colon = string.find(raw, ':', pos, true)
      local size = colon and string.match(string.sub(raw, pos, colon - 1), '^%d+$')
      if not size then return nil end
      local text = string.sub(raw, colon + 1, colon + tonumber(size))
      if #text ~= tonumber(size) then return nil end
      entry[name], pos = text, colon + tonumber(size) + 1
    end
    local colon = string.find(raw, ':', pos, true)
    local count = colon and string.match(string.sub(raw, pos, colon - 1), '^%d+$')
    if not count then return nil end
    entry['r'], entry['m'] = tonumber(count), string.sub(raw, colon + 1)
    return entry
  end
  local ok, entry = pcall(cjson.decode, raw)
  if ok and type(entry) == 'table' and type(entry['q']) == 'string'
      and type(entry['m']) == 'string' and type(entry['e']) == 'string'
      and type(entry['h']) == 'string' and type(entry['r']) == 'number' then
    return entry
  end
  return nil
end
"""

SWEEP_LUA = SETTLE_LUA + LEDGER_LUA + """
-- KEYS: ledger, due, unacked   ARGV: now, batch, postpone_s, inbox_prefix, redelivery_s, max_redeliveries
-- A delivery's score is its last sign of life (publish, start of a run, expected retry);
-- those quiet for longer than the redelivery timeout are examined.
local now = tonumber(ARGV[1])
local cutoff = now - tonumber(ARGV[5])
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff, 'LIMIT', 0, tonumber(ARGV[2]))
if #due == 0 then return {} end
local held = {}
for _, raw in ipairs(redis.call('HVALS', KEYS[3])) do
  local ok, item = pcall(cjson.decode, raw)
  if ok and type(item) == 'table' and type(item[1]) == 'table'
      and type(item[1]['headers']) == 'table' and item[1]['headers']['id'] then
    held[item[1]['headers']['id']] = true
  end
end
local given_up = {}
for _, task_id in ipairs(due) do
  local raw = redis.call('HGET', KEYS[1], task_id)
  if not raw then
    redis.call('ZREM', KEYS[2], task_id)
  else
    local entry = ledger_read(raw)
    local inbox = entry and redis.call('GET', ARGV[4] .. entry['h'] .. ':' .. entry['e'])
    if not entry then
      -- Not what the fan-out writes: handed back to be kept as a dead letter, so that one bad
      -- entry neither stops every sweep nor vanishes.
      settle(KEYS[1], KEYS[2], task_id)
      table.insert(given_up, {task_id, raw})
    elseif inbox == 'done' then
      settle(KEYS[1], KEYS[2], task_id)
    elseif held[task_id] or inbox or redis.call('LLEN', entry['q']) > 0 then
      -- Running, held by a worker, or possibly still waiting in a busy queue: look later.
      redis.call('ZADD', KEYS[2], cutoff + tonumber(ARGV[3]), task_id)
    elseif entry['r'] >= tonumber(ARGV[6]) then
      settle(KEYS[1], KEYS[2], task_id)
      table.insert(given_up, raw)
    else
      redis.call('LPUSH', entry['q'], entry['m'])
      redis.call('HSET', KEYS[1], task_id,
                 ledger_pack(entry['q'], entry['e'], entry['h'], entry['r'] + 1, entry['m']))
      redis.call('ZADD', KEYS[2], now, task_id)
      table.insert(given_up, '')
    end
  end
end
return given_up
"""


class Ledger:
    """One service's ledger: the sweeper's view of it."""

    def __init__(self, client: redis.Redis, service: str, key_prefix: str) -> None:
        self.client = client
        self.prefix = key_prefix
        self.ledger_key = f"{key_prefix}ledger:{service}"
        self.due_key = f"{key_prefix}ledger:{service}:due"
        self._sweep = client.register_script(SWEEP_LUA)

    def sweep(
        self,
        *,
        unacked_key: str,
        redelivery_timeout: float,
        max_redeliveries: int,
        postpone: float,
        batch: int = 200,
    ) -> SweepResult:
        """Send lost deliveries again; report them, those sent too often already, and the
        ledger entries that could not be read (all three are out of the ledger now)."""
        results = run_script(
            self.client,
            self._sweep,
            [self.ledger_key, self.due_key, unacked_key],
            [
                time.time(),
                batch,
                postpone,
                f"{self.prefix}inbox:",
                redelivery_timeout,
                max_redeliveries,
            ],
        )
        found = SweepResult()
        for result in results:
            if isinstance(result, list):
                task_id, raw = result
                found.unreadable.append((_text(task_id), bytes(raw)))
            elif not result:
                found.resent += 1
            else:
                entry = read_ledger_entry(bytes(result))
                if entry is not None:
                    found.given_up.append(entry)
                else:
                    found.unreadable.append(("", bytes(result)))
        return found



# Moves a delivery's ledger entry's due time (a run began, or a retry is expected), if it has one.
TOUCH_LUA = """
-- KEYS: ledger, due   ARGV: task_id, due_at
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
end
return 0
"""


# Settles one delivery's entry (``settle`` alone, for a caller outside the inbox's scripts).
SETTLE_ONE_LUA = SETTLE_LUA + """
-- KEYS: ledger, due   ARGV: task_id
settle(KEYS[1], KEYS[2], ARGV[1])
return 0
"""


class LedgerInbox:
    """Another store's inbox (the Django database's), with the service's lost-delivery ledger
    kept beside it in the broker's Redis, as :class:`Inbox` keeps it with its own records.

    Publishers' fan-outs record every delivery in the subscriber's ledger whatever store the
    subscriber keeps its inbox in; this clears an entry once its delivery is handled (or
    found already handled, or given up) and moves its due time when a run begins or a retry
    is expected, so that the sweeper resends only what was lost. The two stores are not one
    transaction: a crash between them leaves an entry that the sweeper resends and the inbox
    then skips as done, clearing it.
    """

    #: Its records are in another store: the broker's messages are acknowledged by the worker.
    acknowledges = False

    def __init__(self, inbox: InboxRole, client: redis.Redis, service: str, key_prefix: str) -> None:
        self.inbox = inbox
        self.client = client
        self.ledger_key = f"{key_prefix}ledger:{service}"
        self.due_key = f"{key_prefix}ledger:{service}:due"
        self._touch = client.register_script(TOUCH_LUA)
        self._settle_script = client.register_script(SETTLE_ONE_LUA)

    def _settle(self, task_id: str) -> None:
        with store_errors():
            run_script(
                self.client, self._settle_script, [self.ledger_key, self.due_key], [task_id]
            )

    def _due(self, task_id: str, due_at: float) -> None:
        with store_errors():
            run_script(
                self.client, self._touch, [self.ledger_key, self.due_key], [task_id, due_at]
            )

    def process_token(self) -> str:
        return self.inbox.process_token()

    def is_done(self, handler: str, event_id: str, *, event_time: float) -> bool:
        return self.inbox.is_done(handler, event_id, event_time=event_time)

    def new_effects(self) -> Any | None:
        return self.inbox.new_effects()

    def claim(
        self,
        handler: str,
        event_id: str,
        task_id: str,
        *,
        event_time: float,
        lease: str,
        lease_seconds: float,
        use_inbox: bool,
    ) -> Claim:
        found = self.inbox.claim(
            handler, event_id, task_id, event_time=event_time, lease=lease,
            lease_seconds=lease_seconds, use_inbox=use_inbox,
        )
        if found.status == "done":
            self._settle(task_id)
        elif found.status == "run":
            self._due(task_id, time.time() + lease_seconds)
        return found

    def succeed(
        self,
        handler: str,
        event_id: str,
        task_id: str,
        *,
        event_time: float,
        lease: str,
        use_inbox: bool,
        ttl_seconds: float,
        effects: Any | None = None,
        delivery_tag: str | None = None,
    ) -> bool:
        done = self.inbox.succeed(
            handler, event_id, task_id, event_time=event_time, lease=lease, use_inbox=use_inbox,
            ttl_seconds=ttl_seconds, effects=effects,
        )
        if done:  # else the copy that took the lease over settles it
            self._settle(task_id)
        return done

    def release(
        self,
        handler: str,
        event_id: str,
        task_id: str,
        *,
        lease: str,
        failed: bool,
        next_due_in: float = 0.0,
        forget: bool = False,
    ) -> int:
        failures = self.inbox.release(
            handler, event_id, task_id, lease=lease, failed=failed, next_due_in=next_due_in,
            forget=forget,
        )
        if forget:
            self._settle(task_id)
        else:
            self._due(task_id, time.time() + next_due_in)
        return failures

    def forget(self, task_id: str) -> None:
        self.inbox.forget(task_id)
        self._settle(task_id)


def ledger_entry(
    queue: str, payload: str, event_id: str, handler: str, redeliveries: int = 0
) -> bytes:
    """The ledger record of one delivery, as the fan-out script stores it (``LEDGER_LUA``):
    ``queue`` is the queue's key, ``payload`` the message in it."""
    fields = [b"\x01"]
    for text in (queue, event_id, handler):
        raw = text.encode()
        fields += [str(len(raw)).encode(), b":", raw]
    fields += [str(redeliveries).encode(), b":", payload.encode()]
    return b"".join(fields)


def read_ledger_entry(raw: bytes) -> dict[str, Any] | None:
    """The fields of a ledger record, ``{"q", "m", "e", "h", "r"}`` (queue key, message,
    event id, handler, redeliveries), in this format or the JSON one before it; None for
    anything else.

    >>> from celery_events.backends.redis.ledger import ledger_entry, read_ledger_entry
    >>> read_ledger_entry(ledger_entry("events.a", "{}", "e1", "a.h"))["h"]
    'a.h'
    """
    if raw[:1] != b"\x01":
        try:
            entry = _plainjson.loads(raw)
        except ValueError:  # read by Lua's decoder, which is laxer than ours
            return None
        return entry if isinstance(entry, dict) else None
    found: dict[str, Any] = {}
    pos = 1
    for name in ("q", "e", "h"):
        colon = raw.find(b":", pos)
        size = raw[pos:colon]
        if colon < 0 or not size.isdigit():
            return None
        end = colon + 1 + int(size)
        if end > len(raw):
            return None
        found[name] = raw[colon + 1 : end].decode(errors="replace")
        pos = end
    colon = raw.find(b":", pos)
    count = raw[pos:colon]
    if colon < 0 or not count.isdigit():
        return None
    found["r"] = int(count)
    found["m"] = raw[colon + 1 :].decode(errors="replace")
    return found


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
