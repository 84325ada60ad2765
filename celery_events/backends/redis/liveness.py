"""Which worker processes are alive: a key each one renews, not a pid.

Every process that runs deliveries (each prefork child; the worker process itself for the solo,
threads, gevent and eventlet pools) or that holds a worker's unacked messages (the worker's main
process, where kombu's consumer runs) has a random token and keeps ``{key_prefix}alive:{token}``
in the state Redis, with a time to live of :data:`ALIVE_TTL`, renewed every
:data:`RENEW_INTERVAL` by a daemon thread. A process that dies in any way (``kill -9``, its host
gone, an unreaped zombie, a frozen VM) stops renewing, and :data:`ALIVE_TTL` later its key is
gone, whichever host looks. What it held is then taken over: an inbox lease by the next copy
of the delivery that asks for it (in the claim script, atomically), unacked Redis messages by
any worker's sweeper (:data:`REAP_LUA`).

Expiry is Redis's own clock, so hosts need not agree on the time. A process whose renewals do
not reach Redis for :data:`ALIVE_TTL` (Redis down that long, a partition) is presumed dead
too: its deliveries may then run a second time, which at-least-once delivery allows.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid

import redis

from .client import run_script

log = logging.getLogger(__name__)

#: Seconds after its last renewal that a process counts as dead.
ALIVE_TTL = 12.0
#: Seconds between two renewals; several may fail before the key expires.
RENEW_INTERVAL = 2.0


def alive_prefix(key_prefix: str) -> str:
    return f"{key_prefix}alive:"


class _Liveness:
    """This process's token and the thread that keeps its alive keys (one per Redis)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.pid = os.getpid()
        self.token = uuid.uuid4().hex
        self._targets: dict[tuple[int, str], tuple[redis.Redis, str]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_fork(self) -> None:
        # A forked child has the parent's memory but not its thread: it is a new process, with
        # its own token and its own renewals (the lock may have been held at fork: make anew).
        self._lock = threading.Lock()
        self._reset()

    def keep_alive(self, client: redis.Redis, key_prefix: str) -> str:
        """Make sure this process's alive key exists in ``client``'s Redis and is renewed;
        return the process token. The first call writes the key before it returns."""
        if self.pid != os.getpid():  # forked without the fork hook (os.fork wrappers)
            self.after_fork()
        target = (id(client), key_prefix)
        if target in self._targets:
            return self.token
        with self._lock:
            if target not in self._targets:
                self._renew_one(client, key_prefix)
                self._targets[target] = (client, key_prefix)
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._loop, name="celery-events-alive", daemon=True
                    )
                    self._thread.start()
        return self.token

    def abandon(self) -> str:
        """Give up this process's token for a new one and return it: the old alive key is no
        longer renewed, so :data:`ALIVE_TTL` later the reaper puts back whatever the old
        token holds, as if this process had died (see :func:`abandon_token`)."""
        with self._lock:
            self.token = uuid.uuid4().hex
            targets = list(self._targets.values())
        for client, key_prefix in targets:
            try:
                self._renew_one(client, key_prefix)
            except Exception:  # Redis unreachable: the renewal thread writes it when it is back
                pass
        return self.token

    def _renew_one(self, client: redis.Redis, key_prefix: str) -> None:
        # The value is for people looking; only the key's existence counts.
        client.set(
            f"{alive_prefix(key_prefix)}{self.token}",
            json.dumps({"host": socket.gethostname(), "pid": os.getpid()}),
            px=int(ALIVE_TTL * 1000),
        )

    def _loop(self) -> None:
        stop = self._stop
        while not stop.wait(RENEW_INTERVAL):
            for client, key_prefix in list(self._targets.values()):
                try:
                    self._renew_one(client, key_prefix)
                except Exception as exc:  # Redis restarting, say; the next round tries again
                    log.warning("celery-events: could not renew this process's alive key: %s", exc)


liveness = _Liveness()
os.register_at_fork(after_in_child=liveness.after_fork)


def keep_alive(client: redis.Redis, key_prefix: str) -> str:
    """This process's token, with its alive key kept in ``client``'s Redis (see module doc)."""
    return liveness.keep_alive(client, key_prefix)


def abandon_token() -> str:
    """Hand what this process holds over to the reaper, as if it had died: for a holder that
    could not put its unacked messages back itself (its broker connection was lost, the
    restore failed) and whose consumer drops them. This process goes on under a new token;
    an unacked message it still finishes is put back too and skipped by the inbox."""
    return liveness.abandon()


# Puts the Redis messages held by dead worker processes back on their queues, at the head (where
# the next BRPOP takes from), marked redelivered, as kombu's own restore does after the
# visibility timeout. One atomic call, so two sweepers never restore one message twice. A
# message is restored only if it is still unacked and its last holder is the dead one (after a
# visibility-timeout restore another worker may hold the same delivery tag).
REAP_LUA = """
-- KEYS: holders, unacked, unacked_index   ARGV: alive_prefix, held_prefix, batch
local holders = redis.call('HGETALL', KEYS[1])
local alive = {}
local dead = {}
local restored = 0
local budget = tonumber(ARGV[3])
for i = 1, #holders, 2 do
  local tag, token = holders[i], holders[i + 1]
  if alive[token] == nil then
    alive[token] = redis.call('EXISTS', ARGV[1] .. token) == 1
  end
  if not alive[token] and budget > 0 then
    budget = budget - 1
    dead[token] = true
    local held = ARGV[2] .. token
    local raw = redis.call('HGET', held, tag)
    if raw and redis.call('HEXISTS', KEYS[2], tag) == 1 then
      local ok, record = pcall(cjson.decode, raw)
      if ok and type(record) == 'table' and type(record['q']) == 'table'
          and type(record['m']) == 'string' then
        for _, queue in ipairs(record['q']) do
          redis.call('RPUSH', queue, record['m'])
        end
        redis.call('HDEL', KEYS[2], tag)
        redis.call('ZREM', KEYS[3], tag)
        restored = restored + 1
      end
    end
    redis.call('HDEL', KEYS[1], tag)
    redis.call('HDEL', held, tag)
  end
end
return restored
"""


class Reaper:
    """Restores the unacked Redis messages of dead worker processes (see :data:`REAP_LUA`)."""

    def __init__(self, client: redis.Redis, key_prefix: str, global_keyprefix: str,
                 unacked_key: str, unacked_index_key: str) -> None:
        self.client = client
        self.key_prefix = key_prefix
        names = held_names(key_prefix, global_keyprefix)
        self.keys = [
            names.holders,
            global_keyprefix + unacked_key,
            global_keyprefix + unacked_index_key,
        ]
        self.held_prefix = names.held_prefix
        self._script = client.register_script(REAP_LUA)

    def reap(self, batch: int = 1000) -> int:
        """One round; returns how many messages were put back on their queues."""
        return int(
            run_script(
                self.client,
                self._script,
                self.keys,
                [alive_prefix(self.key_prefix), self.held_prefix, batch],
            )
        )


class HeldNames:
    """Where the Redis transport records which process holds which unacked message."""

    def __init__(self, holders: str, held_prefix: str) -> None:
        #: Hash: delivery tag -> token of the process that holds it.
        self.holders = holders
        #: ``{held_prefix}{token}``, hash: delivery tag -> what to push back if it dies.
        self.held_prefix = held_prefix


def held_names(key_prefix: str, global_keyprefix: str = "") -> HeldNames:
    """The keys as Redis stores them (kombu adds ``global_keyprefix`` to keys it writes)."""
    return HeldNames(
        f"{global_keyprefix}{key_prefix}holders", f"{global_keyprefix}{key_prefix}held:"
    )


def restore_record(queue_keys: list[str], payload: str) -> str:
    """The ``held`` record of one message: the Redis lists to push ``payload`` onto."""
    return json.dumps({"q": queue_keys, "m": payload})
