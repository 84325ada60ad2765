"""The per-subscriber inbox and delivery bookkeeping, in Redis.

Keys under ``{key_prefix}``:

- ``inbox:{handler}:{event id}``: the lease of the copy running the delivery now (expires after
  the handler time limit), so a second copy of one delivery never runs beside the first. The
  lease names the process running it; a copy that finds it held takes it over as soon as that
  process's alive key (``liveness.py``) is gone, so a killed worker's delivery runs again
  within seconds, and a running one (even an orphaned prefork child) keeps it. (Earlier
  versions left ``done`` here once the handler succeeded; such a key still counts as done
  until it expires.)
- ``done:{handler}:{minute}`` and ``done:{handler}:{minute}:{level}:{shard}``: the deliveries
  the handler finished, remembered for ``inbox_ttl`` after each was recorded, so that a
  finished one is not run again (:data:`DONE_LUA` says how, in about 25 bytes each);
- ``delivery:{task id}``: ``starts`` (runs begun and not finished: a worker died in them),
  ``failures`` and ``first_failed_at``, for retries, poison detection and dead letters;
- the service's lost-delivery ledger (``ledger.py``), which the scripts here settle (a
  delivery handled, or found already handled) and move (a run began, a retry is expected);
- on the broker's own Redis, kombu's unacked records of the message that brought a delivery,
  which the success script removes with the record (:class:`BrokerAcks`): handled and
  acknowledged in one step, one round trip fewer per delivery.
"""

from __future__ import annotations

import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

import redis

from ..base import Claim, lease_value
from .client import run_script, store_errors
from .ledger import SETTLE_LUA
from .liveness import alive_prefix, keep_alive

__all__ = ["BrokerAcks", "Inbox", "Claim", "done_field", "lease_value"]

#: Seconds of event time one group of done markers covers (``done:{handler}:{minute}``).
BUCKET_SECONDS = 60
#: Markers in the one hash of level 0; level ``l`` has ``SHARDS ** l`` hashes for
#: ``LEVEL_SIZE * SHARDS ** l`` markers, so that each stays under Redis's
#: ``hash-max-listpack-entries`` (128) and is kept as a compact listpack.
LEVEL_SIZE = 80
SHARDS = 4

#: Lua defining ``is_done(base, field, hash)`` and ``mark_done(base, field, hash, ttl_ms)``.
#:
#: The deliveries a handler finished are remembered in small hashes, grouped by the event's
#: own time (one group per minute, ``base`` = ``done:{handler}:{minute}``): the time is fixed
#: per event, so the run that records a delivery and every later run asking for it compute
#: the same group, whatever their clocks say. The field is the event id in compact form
#: (:func:`done_field`), the value one byte. A group's level-0 hash ``base`` holds the first
#: ``LEVEL_SIZE`` markers and the count ``n`` of all of them; once level ``l - 1`` is full,
#: markers go to level ``l``, ``SHARDS ** l`` hashes ``base:{l}:{hash mod SHARDS ** l}``. A
#: lookup asks every level up to the one the last marker went to (a handful of HEXISTS even
#: at thousands of events a second). Every write sets the expiry of the hash it wrote and of
#: ``base`` to ``inbox_ttl`` from now (never shorter than they had): a marker lives at least
#: ``inbox_ttl`` after it was written, ``base`` (and with it the count) at least as long as
#: every other hash of its group, and a group nobody wrote to for ``inbox_ttl`` expires whole.
DONE_LUA = """
local function done_level(count)
  local level, size, total = 0, LEVEL_SIZE, LEVEL_SIZE
  while count >= total do
    level = level + 1
    size = size * SHARDS
    total = total + size
  end
  return level
end
local function done_key(base, level, hash)
  if level == 0 then return base end
  return base .. ':' .. level .. ':' .. string.format('%d', hash % (SHARDS ^ level))
end
local function is_done(base, field, hash)
  local count = redis.call('HGET', base, 'n')
  if not count then return false end
  if redis.call('HEXISTS', base, field) == 1 then return true end
  for level = 1, done_level(tonumber(count) - 1) do
    if redis.call('HEXISTS', done_key(base, level, hash), field) == 1 then return true end
  end
  return false
end
local function keep_for(key, ttl_ms)
  if redis.call('PTTL', key) < ttl_ms then redis.call('PEXPIRE', key, ttl_ms) end
end
local function mark_done(base, field, hash, ttl_ms)
  if is_done(base, field, hash) then return end
  local count = tonumber(redis.call('HGET', base, 'n') or '0')
  local key = done_key(base, done_level(count), hash)
  redis.call('HSET', key, field, '1')
  redis.call('HINCRBY', base, 'n', 1)
  if key ~= base then keep_for(key, ttl_ms) end
  keep_for(base, ttl_ms)
end
""".replace("LEVEL_SIZE", str(LEVEL_SIZE)).replace("SHARDS", str(SHARDS))


def done_field(event_id: str) -> bytes:
    """The event id as a done marker's field: the 16 bytes of a canonical (lowercase, dashed)
    UUID, else its UTF-8 bytes after a byte that never starts UTF-8, never 16 bytes long.

    Only the canonical spelling is packed, so that two spellings of one UUID (upper case, no
    dashes), which are two event ids, never become one field.
    """
    if len(event_id) == 36:
        try:
            parsed = uuid.UUID(event_id)
        except ValueError:
            parsed = None
        if parsed is not None and str(parsed) == event_id:
            return parsed.bytes
    raw = event_id.encode()
    # 0xfe and 0xff never appear in UTF-8; the two forms differ in their first byte.
    return b"\xfe\xfe" + raw if len(raw) == 15 else b"\xff" + raw


def done_place(
    key_prefix: str, handler: str, event_id: str, event_time: float
) -> tuple[str, bytes, int]:
    """Where the done marker of ``event_id`` (published at ``event_time``) lives: its group's
    level-0 key, its field and the hash that picks its shard (see :data:`DONE_LUA`)."""
    field = done_field(event_id)
    bucket = int(event_time // BUCKET_SECONDS)
    return f"{key_prefix}done:{handler}:{bucket}", field, zlib.crc32(field)


CLAIM_LUA = (
    SETTLE_LUA
    + DONE_LUA
    + """
-- KEYS: inbox, state, ledger, due, done
-- ARGV: task_id, lease, lease_ms, use_inbox, due_at, alive_prefix, done_field, done_hash
local current = redis.call('GET', KEYS[1])
if ARGV[4] == '1' and (current == 'done' or is_done(KEYS[5], ARGV[7], tonumber(ARGV[8]))) then
  settle(KEYS[3], KEYS[4], ARGV[1])
  return {'done', '', 0, 0, 0, ''}
end
if ARGV[4] == '1' and current then
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
)

# Records a success when the handler queued no Redis effects (else a MULTI carries them too).
# A run whose lease another copy took over (this process was presumed dead: its alive key
# expired) leaves the record to that copy, which is running.
SUCCEED_LUA = (
    SETTLE_LUA
    + DONE_LUA
    + """
-- KEYS: inbox, state, ledger, due, done[, unacked, unacked_index, holders]
-- ARGV: task_id, use_inbox, inbox_ttl_ms, lease, done_field, done_hash[, delivery_tag, held_prefix]
if ARGV[2] == '1' then
  local current = redis.call('GET', KEYS[1])
  if current and current ~= ARGV[4] and current ~= 'done' then
    return 0
  end
  if current then redis.call('DEL', KEYS[1]) end
  mark_done(KEYS[5], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[3]))
end
redis.call('DEL', KEYS[2])
settle(KEYS[3], KEYS[4], ARGV[1])
if ARGV[7] then
  -- The broker's ack of the message, as kombu's Redis QoS (and transport.py's holder
  -- records) would make it: the worker's own ack then has nothing left to do.
  redis.call('HDEL', KEYS[6], ARGV[7])
  redis.call('ZREM', KEYS[7], ARGV[7])
  local holder = redis.call('HGET', KEYS[8], ARGV[7])
  if holder then
    redis.call('HDEL', KEYS[8], ARGV[7])
    redis.call('HDEL', ARGV[8] .. holder, ARGV[7])
  end
end
return 1
"""
)

# Ends a run that will be retried or dead-lettered: the lease is released (only if still ours),
# the run counts as finished, and a failure is counted.
RELEASE_LUA = (
    SETTLE_LUA
    + """
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
)

# Drops a delivery's bookkeeping and ledger entry (dead-lettered before it could be claimed).
FORGET_LUA = (
    SETTLE_LUA
    + """
-- KEYS: state, ledger, due   ARGV: task_id
redis.call('DEL', KEYS[1])
settle(KEYS[2], KEYS[3], ARGV[1])
return 0
"""
)


@dataclass(frozen=True)
class BrokerAcks:
    """Where kombu's Redis transport keeps the broker's unacknowledged messages, and
    ``transport.py`` who holds each (keys as this Redis stores them): given to an inbox on the
    broker's own Redis, whose success record then acknowledges the message in the same
    script, one round trip fewer per delivery (the worker's ack has nothing left to do)."""

    unacked: str
    unacked_index: str
    holders: str
    held_prefix: str


class Inbox:
    """Bookkeeping of one service's deliveries (see the module docstring).

    A delivery is known by its handler, its event's id and its event's time (``event.time``
    as a POSIX timestamp), which picks where its done marker lives: two events with the same
    id but different times are two events to the inbox (an event republished with a new time
    is run again). Every run of one event reads the same time from its envelope.
    """

    def __init__(
        self,
        client: redis.Redis,
        service: str,
        key_prefix: str,
        broker_acks: BrokerAcks | None = None,
    ) -> None:
        self.client = client
        self.prefix = key_prefix
        self.broker_acks = broker_acks
        #: Whether :meth:`succeed` given a ``delivery_tag`` also acknowledges the message.
        self.acknowledges = broker_acks is not None
        self.ledger_key = f"{key_prefix}ledger:{service}"
        self.due_key = f"{key_prefix}ledger:{service}:due"
        self._claim = client.register_script(CLAIM_LUA)
        self._succeed = client.register_script(SUCCEED_LUA)
        self._release = client.register_script(RELEASE_LUA)
        self._forget = client.register_script(FORGET_LUA)

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

    def is_done(self, handler: str, event_id: str, *, event_time: float) -> bool:
        """Whether ``handler`` finished the event ``event_id`` of ``event_time`` within the
        last ``inbox_ttl``."""
        base, field, hash_ = done_place(self.prefix, handler, event_id, event_time)
        with store_errors():
            if self.client.get(f"{self.prefix}inbox:{handler}:{event_id}") == b"done":
                return True
            return _done_in(self.client, base, field, hash_)

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
        """Take the delivery's lease (``lease``, from :func:`lease_value` with
        :meth:`process_token`), unless it is done or a live copy holds it."""
        now = time.time()
        base, field, hash_ = done_place(self.prefix, handler, event_id, event_time)
        with store_errors():
            status, holder, ttl, starts, failures, first = run_script(
                self.client,
                self._claim,
                [*self._keys(handler, event_id, task_id), base],
                [
                    task_id,
                    lease,
                    int(lease_seconds * 1000),
                    "1" if use_inbox else "0",
                    now + lease_seconds,
                    alive_prefix(self.prefix),
                    field,
                    hash_,
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
        event_time: float,
        lease: str,
        use_inbox: bool,
        ttl_seconds: float,
        effects: redis.client.Pipeline | None = None,
        delivery_tag: str | None = None,
    ) -> bool:
        """Record success, in one transaction with the Redis ``effects`` the handler queued.

        Returns False, committing nothing, when ``lease`` is no longer the delivery's: another
        copy took it over (this process was presumed dead) or already succeeded, and its
        record and effects count, so these are dropped rather than applied twice.

        Raises :class:`StoreUnavailable` when Redis cannot be reached, keeping ``effects``
        queued, so that a call made again once it is back commits them (the script is safe to
        send twice; a transaction whose reply was lost finds its own record and returns False).

        With ``delivery_tag`` (kombu's tag of the message that brought the delivery) and
        :attr:`acknowledges`, a success recorded also acknowledges that message on the broker
        (:class:`BrokerAcks`), atomically with the record.
        """
        base, field, hash_ = done_place(self.prefix, handler, event_id, event_time)
        keys = [*self._keys(handler, event_id, task_id), base]
        args: list[str | int | float | bytes] = [
            task_id,
            "1" if use_inbox else "0",
            int(ttl_seconds * 1000),
            lease,
            field,
            hash_,
        ]
        acks = self.broker_acks
        if acks is not None and delivery_tag:
            keys += [acks.unacked, acks.unacked_index, acks.holders]
            args += [delivery_tag, acks.held_prefix]
        if effects is None or not effects.command_stack:
            # One script call: about half the cost of a MULTI pipeline on this hot path.
            with store_errors():
                return bool(run_script(self.client, self._succeed, keys, args))
        with store_errors():
            committed = self._succeed_with(keys, args, lease, use_inbox, effects)
        effects.reset()
        return committed

    def _succeed_with(
        self,
        keys: list[str],
        args: list[str | int | float | bytes],
        lease: str,
        use_inbox: bool,
        effects: redis.client.Pipeline,
    ) -> bool:
        inbox, base = keys[0], keys[4]
        field, hash_ = args[4], args[5]
        assert isinstance(field, bytes) and isinstance(hash_, int)
        commands = list(effects.command_stack)
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    if use_inbox:
                        # Fenced by the lease and the record: WATCH makes the checks and the
                        # commit one step (every record written to the group changes ``base``).
                        pipe.watch(inbox, base)  # type: ignore[no-untyped-call]
                        current = pipe.get(inbox)
                        if current is not None and current != lease.encode():
                            pipe.reset()
                            return False
                        if _done_in(pipe, base, field, hash_):
                            pipe.reset()
                            return False
                        pipe.multi()
                    for command, options in commands:
                        pipe.execute_command(*command, **options)  # type: ignore[no-untyped-call]
                    # The success record itself, in the transaction (the pipeline loads the
                    # script before MULTI, so EXEC never meets NOSCRIPT); WATCH made its own
                    # checks the ones above.
                    self._succeed(keys=keys, args=args, client=pipe)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue  # the lease or the record changed meanwhile: look again

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


def done_level(count: int) -> int:
    """The level the marker number ``count`` (from 0) of a group goes to (see :data:`DONE_LUA`)."""
    level, size, total = 0, LEVEL_SIZE, LEVEL_SIZE
    while count >= total:
        level += 1
        size *= SHARDS
        total += size
    return level


def _done_in(client: Any, base: str, field: bytes, hash_: int) -> bool:
    """:data:`DONE_LUA`'s ``is_done``, asked with ``client``'s commands (a watching pipeline
    runs them at once)."""
    count = client.hget(base, "n")
    if count is None:
        return False
    for level in range(done_level(int(count) - 1) + 1):
        key = base if level == 0 else f"{base}:{level}:{hash_ % SHARDS**level}"
        if client.hexists(key, field):
            return True
    return False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
