"""The per-subscriber inbox, delivery bookkeeping and the lost-delivery ledger, in Redis.

Keys under ``{key_prefix}``:

- ``inbox:{handler}:{event id}``: ``done`` once the handler succeeded (kept ``inbox_ttl``), or
  the lease of the copy running it now (expires after the handler time limit), so a second copy
  of one delivery never runs beside the first and a finished one is not run again. The lease
  names the process running it; a copy that finds it held takes it over as soon as that
  process's alive key (``liveness.py``) is gone, so a killed worker's delivery runs again
  within seconds, and a running one (even an orphaned prefork child) keeps it;
- ``delivery:{task id}``: ``starts`` (runs begun and not finished: a worker died in them),
  ``failures`` and ``first_failed_at``, for retries, poison detection and dead letters;
- ``ledger:{service}`` and ``ledger:{service}:due``: every delivery from publish until it is
  handled or dead-lettered, with its message, scored by its last sign of life. Written atomically with the fan-out, it is how a
  message that vanished between the queue and a worker (a worker killed just after taking it, a
  retry whose re-publish failed, Redis restarting at the wrong moment) is found and sent again.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from ... import _plainjson
from ..base import Claim, SweepResult, lease_value
from ..base import Inbox as InboxRole
from .client import run_script, store_errors
from .liveness import alive_prefix, keep_alive

__all__ = ["Inbox", "LedgerInbox", "Claim", "SweepResult", "lease_value", "ledger_entry"]

CLAIM_LUA = """
-- KEYS: inbox, state, ledger, due   ARGV: task_id, lease, lease_ms, use_inbox, due_at, alive_prefix
local current = redis.call('GET', KEYS[1])
if ARGV[4] == '1' and current then
  if current == 'done' then
    redis.call('HDEL', KEYS[3], ARGV[1])
    redis.call('ZREM', KEYS[4], ARGV[1])
    return {'done', '', 0, 0, 0, ''}
  end
  if current ~= ARGV[2] then
    -- Another copy holds the lease. It is busy while its process's alive key lives; once that
    -- is gone (the process died, whatever host it was on), this copy takes the lease over.
    local lease_ttl = redis.call('PTTL', KEYS[1])
    local ok, holder = pcall(cjson.decode, current)
    if ok and type(holder) == 'table' and type(holder['process']) == 'string' then
      local alive_ttl = redis.call('PTTL', ARGV[6] .. holder['process'])
      if alive_ttl ~= -2 then
        if alive_ttl >= 0 and alive_ttl < lease_ttl then lease_ttl = alive_ttl end
        return {'busy', current, lease_ttl, 0, 0, ''}
      end
    else
      -- A lease that names no process (written by an older version): wait for it to expire.
      return {'busy', current, lease_ttl, 0, 0, ''}
    end
  end
end
local starts
if redis.call('HGET', KEYS[2], 'lease') == ARGV[2] then
  -- This run's own claim, sent again because its reply was lost (the state store went away):
  -- it stands, and its start is not counted twice.
  starts = tonumber(redis.call('HGET', KEYS[2], 'starts') or '1')
else
  starts = redis.call('HINCRBY', KEYS[2], 'starts', 1)
  redis.call('HSET', KEYS[2], 'lease', ARGV[2])
end
redis.call('PEXPIRE', KEYS[2], ARGV[3] * 4 + 86400000)
if ARGV[4] == '1' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
end
local failures = tonumber(redis.call('HGET', KEYS[2], 'failures') or '0')
local first = redis.call('HGET', KEYS[2], 'first_failed_at') or ''
return {'run', '', 0, starts, failures, first}
"""

# Records a success when the handler queued no Redis effects (else a MULTI carries them too).
# A run whose lease another copy took over (this process was presumed dead: its alive key
# expired) leaves the record to that copy, which is running.
SUCCEED_LUA = """
-- KEYS: inbox, state, ledger, due   ARGV: task_id, use_inbox, inbox_ttl_ms, lease
if ARGV[2] == '1' then
  local current = redis.call('GET', KEYS[1])
  if current and current ~= ARGV[4] and current ~= 'done' then
    return 0
  end
  redis.call('SET', KEYS[1], 'done', 'PX', ARGV[3])
end
redis.call('DEL', KEYS[2])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
"""

# Ends a run that will be retried or dead-lettered: the lease is released (only if still ours),
# the run counts as finished, and a failure is counted.
RELEASE_LUA = """
-- KEYS: inbox, state, ledger, due   ARGV: task_id, lease, failed, now, due_at, forget
if redis.call('GET', KEYS[1]) == ARGV[2] then
  redis.call('DEL', KEYS[1])
end
if ARGV[6] == '1' then
  redis.call('DEL', KEYS[2])
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
  return 0
end
if redis.call('HGET', KEYS[2], 'released') == ARGV[2] then
  -- This run's release, sent again because its reply was lost: its failure counts once.
  return tonumber(redis.call('HGET', KEYS[2], 'failures') or '0')
end
redis.call('HSET', KEYS[2], 'starts', 0, 'released', ARGV[2])
local failures = 0
if ARGV[3] == '1' then
  failures = redis.call('HINCRBY', KEYS[2], 'failures', 1)
  redis.call('HSETNX', KEYS[2], 'first_failed_at', ARGV[4])
end
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
end
return failures
"""

SWEEP_LUA = """
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
    local ok, entry = pcall(cjson.decode, raw)
    if not (ok and type(entry) == 'table' and type(entry['q']) == 'string'
        and type(entry['m']) == 'string' and type(entry['e']) == 'string'
        and type(entry['h']) == 'string' and type(entry['r']) == 'number') then
      entry = nil
    end
    local inbox = entry and redis.call('GET', ARGV[4] .. entry['h'] .. ':' .. entry['e'])
    if not entry then
      -- Not what the fan-out writes: handed back to be kept as a dead letter, so that one bad
      -- entry neither stops every sweep nor vanishes.
      redis.call('HDEL', KEYS[1], task_id)
      redis.call('ZREM', KEYS[2], task_id)
      table.insert(given_up, {task_id, raw})
    elseif inbox == 'done' then
      redis.call('HDEL', KEYS[1], task_id)
      redis.call('ZREM', KEYS[2], task_id)
    elseif held[task_id] or inbox or redis.call('LLEN', entry['q']) > 0 then
      -- Running, held by a worker, or possibly still waiting in a busy queue: look later.
      redis.call('ZADD', KEYS[2], cutoff + tonumber(ARGV[3]), task_id)
    elseif entry['r'] >= tonumber(ARGV[6]) then
      redis.call('HDEL', KEYS[1], task_id)
      redis.call('ZREM', KEYS[2], task_id)
      table.insert(given_up, raw)
    else
      entry['r'] = entry['r'] + 1
      redis.call('LPUSH', entry['q'], entry['m'])
      redis.call('HSET', KEYS[1], task_id, cjson.encode(entry))
      redis.call('ZADD', KEYS[2], now, task_id)
      table.insert(given_up, '')
    end
  end
end
return given_up
"""


class Inbox:
    """Bookkeeping of one service's deliveries (see the module docstring)."""

    def __init__(self, client: redis.Redis, service: str, key_prefix: str) -> None:
        self.client = client
        self.prefix = key_prefix
        self.ledger_key = f"{key_prefix}ledger:{service}"
        self.due_key = f"{key_prefix}ledger:{service}:due"
        self._claim = client.register_script(CLAIM_LUA)
        self._succeed = client.register_script(SUCCEED_LUA)
        self._release = client.register_script(RELEASE_LUA)
        self._sweep = client.register_script(SWEEP_LUA)

    def _keys(self, handler: str, event_id: str, task_id: str) -> list[str]:
        return [
            f"{self.prefix}inbox:{handler}:{event_id}",
            f"{self.prefix}delivery:{task_id}",
            self.ledger_key,
            self.due_key,
        ]

    def process_token(self) -> str:
        """This process's token, its alive key kept (``liveness.py``); leases name it."""
        with store_errors():
            return keep_alive(self.client, self.prefix)

    def new_effects(self) -> redis.client.Pipeline:
        """A transaction for the Redis effects a handler queues (``bus.redis_effects()``)."""
        return self.client.pipeline(transaction=True)

    def is_done(self, handler: str, event_id: str) -> bool:
        with store_errors():
            return self.client.get(f"{self.prefix}inbox:{handler}:{event_id}") == b"done"

    def claim(
        self,
        handler: str,
        event_id: str,
        task_id: str,
        *,
        lease: str,
        lease_seconds: float,
        use_inbox: bool,
    ) -> Claim:
        """Take the delivery's lease (``lease``, from :func:`lease_value` with
        :meth:`process_token`), unless it is done or a live copy holds it."""
        now = time.time()
        with store_errors():
            status, holder, ttl, starts, failures, first = run_script(
                self.client,
                self._claim,
                self._keys(handler, event_id, task_id),
                [
                    task_id,
                    lease,
                    int(lease_seconds * 1000),
                    "1" if use_inbox else "0",
                    now + lease_seconds,
                    alive_prefix(self.prefix),
                ],
            )
        return Claim(
            status=_text(status),
            holder=_text(holder),
            holder_ttl_ms=int(ttl),
            starts=int(starts),
            failures=int(failures),
            first_failed_at=float(first) if first else None,
        )

    def succeed(
        self,
        handler: str,
        event_id: str,
        task_id: str,
        *,
        lease: str,
        use_inbox: bool,
        ttl_seconds: float,
        effects: redis.client.Pipeline | None = None,
    ) -> bool:
        """Record success, in one transaction with the Redis ``effects`` the handler queued.

        Returns False, committing nothing, when ``lease`` is no longer the delivery's: another
        copy took it over (this process was presumed dead) or already succeeded, and its
        record and effects count, so these are dropped rather than applied twice.

        Raises :class:`StoreUnavailable` when Redis cannot be reached, keeping ``effects``
        queued, so that a call made again once it is back commits them (the script is safe to
        send twice; a transaction whose reply was lost finds its own record and returns False).
        """
        keys = self._keys(handler, event_id, task_id)
        if effects is None or not effects.command_stack:
            # One script call: about half the cost of a MULTI pipeline on this hot path.
            with store_errors():
                return bool(
                    run_script(
                        self.client,
                        self._succeed,
                        keys,
                        [task_id, "1" if use_inbox else "0", int(ttl_seconds * 1000), lease],
                    )
                )
        with store_errors():
            committed = self._succeed_with(keys, task_id, lease, use_inbox, ttl_seconds, effects)
        effects.reset()
        return committed

    def _succeed_with(
        self,
        keys: list[str],
        task_id: str,
        lease: str,
        use_inbox: bool,
        ttl_seconds: float,
        effects: redis.client.Pipeline,
    ) -> bool:
        inbox, state, ledger, due = keys
        commands = list(effects.command_stack)
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    if use_inbox:
                        # Fenced by the lease: WATCH makes the check and the commit one step.
                        pipe.watch(inbox)  # type: ignore[no-untyped-call]
                        current = pipe.get(inbox)
                        if current is not None and current != lease.encode():
                            pipe.reset()
                            return False
                        pipe.multi()
                    for args, options in commands:
                        pipe.execute_command(*args, **options)  # type: ignore[no-untyped-call]
                    if use_inbox:
                        pipe.set(inbox, "done", px=int(ttl_seconds * 1000))
                    pipe.delete(state)
                    pipe.hdel(ledger, task_id)
                    pipe.zrem(due, task_id)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue  # the lease changed meanwhile: look again

    def forget(self, task_id: str) -> None:
        """Drop a delivery's bookkeeping (it was dead-lettered before it could be claimed)."""
        with store_errors(), self.client.pipeline(transaction=True) as pipe:
            pipe.delete(f"{self.prefix}delivery:{task_id}")
            pipe.hdel(self.ledger_key, task_id)
            pipe.zrem(self.due_key, task_id)
            pipe.execute()

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
        """End a run that is retried (``forget=False``) or given up (``forget=True``)."""
        now = time.time()
        with store_errors():
            return int(
                run_script(
                    self.client,
                    self._release,
                    self._keys(handler, event_id, task_id),
                    [
                        task_id,
                        lease,
                        "1" if failed else "0",
                        now,
                        now + next_due_in,
                        "1" if forget else "0",
                    ],
                )
            )

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
                try:
                    entry = _plainjson.loads(result)
                except ValueError:  # read by Lua's decoder, which is laxer than ours
                    entry = None
                if isinstance(entry, dict):
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

    def __init__(self, inbox: InboxRole, client: redis.Redis, service: str, key_prefix: str) -> None:
        self.inbox = inbox
        self.client = client
        self.ledger_key = f"{key_prefix}ledger:{service}"
        self.due_key = f"{key_prefix}ledger:{service}:due"
        self._touch = client.register_script(TOUCH_LUA)

    def _settle(self, task_id: str) -> None:
        with store_errors(), self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(self.ledger_key, task_id)
            pipe.zrem(self.due_key, task_id)
            pipe.execute()

    def _due(self, task_id: str, due_at: float) -> None:
        with store_errors():
            run_script(
                self.client, self._touch, [self.ledger_key, self.due_key], [task_id, due_at]
            )

    def process_token(self) -> str:
        return self.inbox.process_token()

    def is_done(self, handler: str, event_id: str) -> bool:
        return self.inbox.is_done(handler, event_id)

    def new_effects(self) -> Any | None:
        return self.inbox.new_effects()

    def claim(
        self,
        handler: str,
        event_id: str,
        task_id: str,
        *,
        lease: str,
        lease_seconds: float,
        use_inbox: bool,
    ) -> Claim:
        found = self.inbox.claim(
            handler, event_id, task_id, lease=lease, lease_seconds=lease_seconds, use_inbox=use_inbox
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
        lease: str,
        use_inbox: bool,
        ttl_seconds: float,
        effects: Any | None = None,
    ) -> bool:
        done = self.inbox.succeed(
            handler, event_id, task_id, lease=lease, use_inbox=use_inbox,
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


def ledger_entry(queue: str, payload: str, event_id: str, handler: str) -> str:
    """The ledger record of one delivery, as the fan-out script stores it."""
    return json.dumps({"q": queue, "m": payload, "e": event_id, "h": handler, "r": 0})


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
