"""The per-subscriber inbox and delivery bookkeeping, in Redis.

Keys under ``{key_prefix}``:

- ``inbox:{handler}:{event id}``: ``done`` once the handler succeeded (kept ``inbox_ttl``), or
  the lease of the copy running it now (expires after the handler time limit), so a second copy
  of one delivery never runs beside the first and a finished one is not run again. The lease
  names the process running it; a copy that finds it held takes it over as soon as that
  process's alive key (``liveness.py``) is gone, so a killed worker's delivery runs again
  within seconds, and a running one (even an orphaned prefork child) keeps it;
- ``delivery:{task id}``: ``starts`` (runs begun and not finished: a worker died in them),
  ``failures`` and ``first_failed_at``, for retries, poison detection and dead letters;
- the service's lost-delivery ledger (``ledger.py``), which the scripts here settle (a
  delivery handled, or found already handled) and move (a run began, a retry is expected).
"""

from __future__ import annotations

import time
from typing import Any

import redis

from ..base import Claim, lease_value
from .client import run_script, store_errors
from .ledger import SETTLE_LUA, SETTLE_ONE_LUA
from .liveness import alive_prefix, keep_alive

__all__ = ["Inbox", "Claim", "lease_value"]

CLAIM_LUA = SETTLE_LUA + """
-- KEYS: inbox, state, ledger, due   ARGV: task_id, lease, lease_ms, use_inbox, due_at, alive_prefix
local current = redis.call('GET', KEYS[1])
if ARGV[4] == '1' and current then
  if current == 'done' then
    settle(KEYS[3], KEYS[4], ARGV[1])
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
SUCCEED_LUA = SETTLE_LUA + """
-- KEYS: inbox, state, ledger, due   ARGV: task_id, use_inbox, inbox_ttl_ms, lease
if ARGV[2] == '1' then
  local current = redis.call('GET', KEYS[1])
  if current and current ~= ARGV[4] and current ~= 'done' then
    return 0
  end
  redis.call('SET', KEYS[1], 'done', 'PX', ARGV[3])
end
redis.call('DEL', KEYS[2])
settle(KEYS[3], KEYS[4], ARGV[1])
return 1
"""

# Ends a run that will be retried or dead-lettered: the lease is released (only if still ours),
# the run counts as finished, and a failure is counted.
RELEASE_LUA = SETTLE_LUA + """
-- KEYS: inbox, state, ledger, due   ARGV: task_id, lease, failed, now, due_at, forget
if redis.call('GET', KEYS[1]) == ARGV[2] then
  redis.call('DEL', KEYS[1])
end
if ARGV[6] == '1' then
  redis.call('DEL', KEYS[2])
  settle(KEYS[3], KEYS[4], ARGV[1])
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

# Drops a delivery's bookkeeping and ledger entry (dead-lettered before it could be claimed).
FORGET_LUA = SETTLE_LUA + """
-- KEYS: state, ledger, due   ARGV: task_id
redis.call('DEL', KEYS[1])
settle(KEYS[2], KEYS[3], ARGV[1])
return 0
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
        self._forget = client.register_script(FORGET_LUA)
        self._settle = client.register_script(SETTLE_ONE_LUA)

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
                    # The ledger's own settling, in the transaction (the pipeline loads the
                    # script before MULTI, so EXEC never meets NOSCRIPT).
                    self._settle(keys=[ledger, due], args=[task_id], client=pipe)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue  # the lease changed meanwhile: look again

    def forget(self, task_id: str) -> None:
        """Drop a delivery's bookkeeping (it was dead-lettered before it could be claimed)."""
        with store_errors():
            run_script(
                self.client,
                self._forget,
                [f"{self.prefix}delivery:{task_id}", self.ledger_key, self.due_key],
                [task_id],
            )

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

def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
