"""Putting all deliveries of one event on the broker in one round trip.

On Redis, one Lua script checks every target queue and pushes every message: Redis runs a
script atomically, so either every subscriber's queue gets its delivery or none does (a
publisher that dies mid-call, a wrong-typed key, an ACL refusal or an out-of-memory refusal
leaves nothing behind). Other brokers send through Celery's producer (``backends/kombu.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio
from celery import Celery, signals

from ..._messages import SentEvents, TaskMessage, redis_payload
from ...errors import NotReplicatedError, PublishError, describe
from ..base import QueueReader, ServiceBus
from . import aio
from .client import ReplyLost, run_script, run_script_replicated
from .queues import BrokerQueues
from .worker import check_visibility_timeout, configure_worker

if TYPE_CHECKING:
    from ..base import Outgoing

log = logging.getLogger(__name__)

# KEYS: none: every key is in ARGV. A Redis ACL checks the keys an EVALSHA declares with the
#       rights of a read-write command, so declaring the subscribers' queues and ledgers would
#       need read rights on them; undeclared, each command in the script is checked on its own,
#       so a publisher needs only the right to append (LPUSH, HSETNX, ZADD) to them (see
#       celery_events/acl.py). Redis Cluster, which needs declared keys, is not supported.
# ARGV: n, ledger on ('1'/'0'), the time of publishing, the event id, n queue keys, n payloads,
#       n task ids, n handler task names, then (with the ledger) n ledger hashes and n due
#       sets, then the task-event channel, the number m of task events, m event payloads, then
#       the catalog hash ('' for none), field and value.
# The ledger records (the fields of _inbox.ledger_entry) are encoded here by Redis's cjson:
# Redis copies every script argument into Lua, at about 1.5 µs per KB, so sending each payload
# once, not also inside its record, is what keeps a publish to ten subscribers fast.
# Task events are PUBLISHed as kombu's Redis transport sends to a fanout exchange, in the same
# script, so Flower hears of exactly the deliveries that were queued.
#
# All or nothing: Redis runs a script atomically but does not roll back the writes made before
# a command that fails (a Redis 7 ACL user without channel rights fails on PUBLISH, after the
# pushes). So before the first write the script asks the ACL (redis.acl_check_cmd, Redis 7)
# whether every command it will run is allowed, and checks every key's type; a refusal
# returns before anything is written (an undo could not be relied on here: a user that may
# only append to a queue may not LPOP it). Every write still goes through redis.pcall, and a
# failure that no check foresaw undoes the earlier writes in reverse order before returning
# the error. No other client runs in between, so LPOP takes back exactly the message LPUSH put
# at the head. The ledger is written with HSETNX and ZADD NX: a field or member that is
# already there belongs to the same delivery (a publish retried after a lost reply repeats
# its task ids) and is kept as it is, so an undo removes only what this call added, without
# reading anything first. The PUBLISHes, which cannot be undone, come last.
_FANOUT_LUA = """
local n = tonumber(ARGV[1])
local ledger = ARGV[2] == '1'
local Q, P, T, H = 4, 4 + n, 4 + 2 * n, 4 + 3 * n
local L, D, at = 4 + 4 * n, 4 + 5 * n, 5 + 4 * n
if ledger then at = 5 + 6 * n end
local channel, m = ARGV[at], tonumber(ARGV[at + 1])
local catalog_key = ARGV[at + 2 + m]
local catalog_field, catalog_value = ARGV[at + 3 + m], ARGV[at + 4 + m]
local function refused(command, key)
  return redis.error_reply('NOPERM this user has no permissions to run ' .. command ..
                           ' on ' .. key .. ', so no delivery was sent')
end
local function expect(key, wanted)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'none' and kind ~= wanted then
    return redis.error_reply('WRONGTYPE key ' .. key .. ' holds a ' .. kind ..
                             ', not a ' .. wanted)
  end
  return nil
end
local allowed = redis.acl_check_cmd
for i = 1, n do
  local queue = ARGV[Q + i]
  if allowed and not allowed('LPUSH', queue, 'x') then return refused('LPUSH', queue) end
  local wrong = expect(queue, 'list')
  if wrong then return wrong end
  if ledger then
    local entries, due = ARGV[L + i], ARGV[D + i]
    if allowed and not allowed('HSETNX', entries, 'x', 'x') then return refused('HSETNX', entries) end
    if allowed and not allowed('ZADD', due, 'NX', '0', 'x') then return refused('ZADD', due) end
    wrong = expect(entries, 'hash') or expect(due, 'zset')
    if wrong then return wrong end
  end
end
if catalog_key ~= '' then
  if allowed and not allowed('HSET', catalog_key, 'x', 'x') then return refused('HSET', catalog_key) end
  local wrong = expect(catalog_key, 'hash')
  if wrong then return wrong end
end
if m > 0 and allowed and not allowed('PUBLISH', channel, 'x') then
  return redis.error_reply('NOPERM this user has no permissions to publish to the channel ' ..
                           channel .. ', so no delivery was sent')
end
local pushed, recorded = 0, 0
local added_entry, added_due = {}, {}
local catalog_old, catalog_set = nil, false
local function rollback(reply)
  if catalog_set then
    if catalog_old then
      redis.pcall('HSET', catalog_key, catalog_field, catalog_old)
    else
      redis.pcall('HDEL', catalog_key, catalog_field)
    end
  end
  for i = recorded, 1, -1 do
    if added_due[i] then redis.pcall('ZREM', ARGV[D + i], ARGV[T + i]) end
    if added_entry[i] then redis.pcall('HDEL', ARGV[L + i], ARGV[T + i]) end
  end
  for i = pushed, 1, -1 do
    redis.pcall('LPOP', ARGV[Q + i])
  end
  return redis.error_reply(reply['err'])
end
local function failed(reply)
  return type(reply) == 'table' and reply['err'] ~= nil
end
for i = 1, n do
  local reply = redis.pcall('LPUSH', ARGV[Q + i], ARGV[P + i])
  if failed(reply) then return rollback(reply) end
  pushed = i
end
if ledger then
  for i = 1, n do
    local task_id = ARGV[T + i]
    local entry = cjson.encode({q = ARGV[Q + i], m = ARGV[P + i], e = ARGV[4],
                                h = ARGV[H + i], r = 0})
    local reply = redis.pcall('HSETNX', ARGV[L + i], task_id, entry)
    if failed(reply) then return rollback(reply) end
    added_entry[i] = reply == 1
    recorded = i
    reply = redis.pcall('ZADD', ARGV[D + i], 'NX', ARGV[3], task_id)
    if failed(reply) then return rollback(reply) end
    added_due[i] = reply == 1
  end
end
if catalog_key ~= '' then
  -- Once per name and process: reading the old value first costs little here.
  local old = redis.pcall('HGET', catalog_key, catalog_field)
  if failed(old) then return rollback(old) end
  local reply = redis.pcall('HSET', catalog_key, catalog_field, catalog_value)
  if failed(reply) then return rollback(reply) end
  catalog_old, catalog_set = old, true
end
for j = 1, m do
  local reply = redis.pcall('PUBLISH', channel, ARGV[at + 1 + j])
  if failed(reply) then return rollback(reply) end
end
return n
"""


class _Signals:
    """Fires Celery's publish signals with the arguments ``send_task_message`` gives them."""

    def __init__(self, app: Celery | None) -> None:
        self.app = app

    def before(self, messages: Sequence[TaskMessage]) -> None:
        # Tracing tools (Sentry, OpenTelemetry) add headers here, so it runs before encoding.
        if not signals.before_task_publish.receivers:
            return
        policy = dict(self.app.conf.task_publish_retry_policy) if self.app else None
        for message in messages:
            signals.before_task_publish.send(
                sender=message.task_name,
                body=message.body,
                exchange="",
                routing_key=message.queue,
                declare=self._declare(message.queue),
                headers=message.headers,
                properties=message.properties,
                retry_policy=policy,
            )

    def after(self, messages: Sequence[TaskMessage]) -> None:
        if not signals.after_task_publish.receivers:
            return
        for message in messages:
            signals.after_task_publish.send(
                sender=message.task_name,
                body=message.body,
                headers=message.headers,
                exchange="",
                routing_key=message.queue,
            )

    def _declare(self, queue: str) -> list[Any]:
        if self.app is None:
            return []
        queues = self.app.amqp.queues
        # The Queue send_task would declare, without adding it to the app's queues.
        return [queues[queue] if queue in queues else queues.new_missing(queue)]


class RedisFanout:
    """The Redis backend's transport: sends deliveries straight to kombu's Redis queue lists
    with one atomic script, and prepares workers to consume them (``worker.py``).

    ``app``, when given, is the Celery app whose publish signals and ``task-sent`` events
    (``task_send_sent_event``) this fan-out reproduces. ``catalog_key``, when given, is the
    registry's catalog hash on the same Redis: a publish records its catalog entry there in
    the same script.
    """

    def __init__(
        self,
        client: redis.Redis,
        timeout: float,
        *,
        key_prefix: str = "",
        ledger_prefix: str | None = None,
        app: Celery | None = None,
        catalog_key: str | None = None,
        wait_for_replicas: int = 0,
        wait_for_replicas_timeout: float = 1.0,
        connect_async: Callable[[], redis.asyncio.Redis] | None = None,
    ) -> None:
        self.client = client
        # The asyncio publish's clients, one per event loop, made by ``connect_async`` with
        # the blocking client's URL and options (None: asend_many sends in a thread).
        self._aio = None if connect_async is None else aio.LoopClients(connect_async)
        # WAIT after the script: how many replicas must hold its writes, and for how long.
        self.wait_for_replicas = wait_for_replicas
        self.wait_for_replicas_timeout = wait_for_replicas_timeout
        self.catalog_key = catalog_key
        self.records_catalog = catalog_key is not None
        self.assigns_task_ids = False
        self.timeout = timeout
        # kombu's global_keyprefix transport option prefixes every queue key.
        self.key_prefix = key_prefix
        # Where deliveries are recorded until handled (see _inbox.py); None: not recorded.
        self.ledger_prefix = ledger_prefix
        #: The fan-out script (its ``sha`` and text, for a client of another kind).
        self.script = client.register_script(_FANOUT_LUA)
        self._signals = _Signals(app)
        db = int(client.connection_pool.connection_kwargs.get("db", 0) or 0)
        self._sent_events = SentEvents(app, db) if app is not None else None

    def send(self, messages: Sequence[TaskMessage], catalog: tuple[str, str] | None) -> None:
        self.send_many([(messages, catalog)])

    def send_many(self, batches: Sequence[Outgoing]) -> None:
        for call in self._calls(batches):
            for messages, _ in call:
                self._signals.before(messages)
            self.finish(call, self._run([], self.arguments(call)))

    async def asend_many(self, batches: Sequence[Outgoing]) -> None:
        """:meth:`send_many` on the running event loop, through its ``redis.asyncio`` client:
        the same script, retries within ``publish_timeout``, WAIT, signals and errors, and
        no blocking I/O on the loop."""
        if self._aio is None:
            await asyncio.to_thread(self.send_many, batches)
            return
        for call in self._calls(batches):
            for messages, _ in call:
                self._signals.before(messages)
            self.finish(call, await self._arun([], self.arguments(call)))

    @staticmethod
    def _calls(batches: Sequence[Outgoing]) -> list[list[Outgoing]]:
        """The events of one script call each, in order (the blocking and the asyncio send
        share it)."""
        # One script call per event for now: atomic per event, not across them (issue 16
        # makes it one call).
        return [[batch] for batch in batches if batch[0]]

    def arguments(self, batches: Sequence[Outgoing]) -> list[str | int | float]:
        """The fan-out script's arguments for ``batches`` (it declares no keys), once the
        ``before_task_publish`` receivers have run; ``script`` runs them, and
        :meth:`finish` reads its reply. Shared by the blocking and the asyncio publish."""
        if len(batches) != 1:
            # One script call per event until the script takes many (issue 16).
            raise NotImplementedError("one event per fan-out script call")
        messages, catalog = batches[0]
        prefix = self.key_prefix
        ledger = self.ledger_prefix
        args: list[str | int | float] = [
            len(messages),
            "0" if ledger is None else "1",
            time.time(),
            messages[0].event_id,
        ]
        args.extend([prefix + m.queue for m in messages])
        args.extend([redis_payload(m) for m in messages])
        args.extend([m.task_id for m in messages])
        args.extend([m.task_name for m in messages])
        if ledger is not None:
            # The ledger keeps each delivery's message until it is handled (see _inbox.py).
            args.extend([f"{ledger}ledger:{m.service}" for m in messages])
            args.extend([f"{ledger}ledger:{m.service}:due" for m in messages])
        events = self._sent_events
        if events is not None and events.enabled:
            args.append(events.channel)
            args.append(len(messages))
            args.extend(events.payloads(messages))
        else:
            args.append("")
            args.append(0)
        if catalog is not None and self.catalog_key is not None:
            args.append(self.catalog_key)
            args.extend(catalog)
        else:
            args.extend(("", "", ""))
        return args

    def finish(self, batches: Sequence[Outgoing], acknowledged: int) -> None:
        """After the script ran: the ``after_task_publish`` signals, then the replicas'
        check (``acknowledged``: how many replicas hold its writes, when WAIT was asked)."""
        for messages, _ in batches:
            self._signals.after(messages)
        if acknowledged < self.wait_for_replicas:
            raise NotReplicatedError(
                _not_replicated(acknowledged, self.wait_for_replicas, self.wait_for_replicas_timeout),
                acknowledged=acknowledged,
                wanted=self.wait_for_replicas,
            )

    def prepare_worker(self, bus: ServiceBus) -> None:
        configure_worker(bus)

    def check_worker(self, bus: ServiceBus) -> None:
        check_visibility_timeout(bus)

    def queue_reader(self, timeout: float) -> QueueReader:
        return BrokerQueues.from_app(self._signals.app, timeout)

    def close(self) -> None:
        if self._aio is not None:
            self._aio.close()
        self.client.close()

    async def aclose(self) -> None:
        """Close the running loop's asyncio client (the blocking one closes with :meth:`close`)."""
        if self._aio is not None:
            await self._aio.aclose()

    def _wait(self) -> tuple[int, int] | None:
        # WAIT's own timeout is whole milliseconds; 0 would mean "forever".
        if not self.wait_for_replicas:
            return None
        return self.wait_for_replicas, max(1, int(self.wait_for_replicas_timeout * 1000))

    def _run(self, keys: list[str], args: list[str | int | float]) -> int:
        """Run the fan-out script; return how many replicas acknowledged its writes (when
        ``wait_for_replicas`` asks, else 0)."""
        attempts = _Attempts(self.timeout)
        wait = self._wait()
        while True:
            try:
                if wait is None:
                    run_script(self.client, self.script, keys, args)
                    return 0
                return run_script_replicated(self.client, self.script, keys, args, *wait)[1]
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                time.sleep(attempts.unreachable(exc))
            except redis.RedisError as exc:
                raise attempts.refused(exc) from exc

    async def _arun(self, keys: list[str], args: list[str | int | float]) -> int:
        """:meth:`_run` on the running loop's asyncio client."""
        assert self._aio is not None
        pipeline = self._aio.pipeline()
        attempts = _Attempts(self.timeout)
        wait = self._wait()
        while True:
            try:
                if wait is None:
                    # Concurrent publishes of the loop share writes and round trips.
                    await pipeline.run(self.script, keys, args)
                    return 0
                # WAIT counts the writes of its own connection: one call, one connection.
                reply = await aio.run_script(pipeline.client, self.script, keys, args, wait)
                return int(reply[1])
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                await asyncio.sleep(attempts.unreachable(exc))
            except redis.RedisError as exc:
                raise attempts.refused(exc) from exc


class _Attempts:
    """The tries of one fan-out script call until ``publish_timeout``, and the error that
    ends them: shared by the blocking and the asyncio run, so both retry and fail alike."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.pause = 0.05
        self.reply_lost = False

    def unreachable(self, exc: redis.RedisError) -> float:
        """After a connection error or timeout: the pause before the next try, or raise
        :class:`PublishError` when the next try would end after the deadline."""
        # The script runs whole or not at all; a lost reply may mean it ran, and then the
        # retry repeats deliveries with the same ids, which the inbox absorbs.
        self.reply_lost = self.reply_lost or isinstance(exc, ReplyLost)
        pause = self.pause
        if self.deadline - time.monotonic() <= pause:
            raise PublishError(_unreachable(self.timeout, exc, self.reply_lost)) from exc
        log.warning("celery-events: publish failed, retrying: %s", exc)
        self.pause = min(pause * 2, 0.5)
        return pause

    def refused(self, exc: redis.RedisError) -> PublishError:
        """The error of a script Redis refused (it undid its own writes before replying)."""
        if self.reply_lost:
            return PublishError(_unreachable(self.timeout, exc, True))
        return PublishError(_refused(exc))


def _unreachable(timeout: float, exc: BaseException, reply_lost: bool) -> str:
    text = (
        f"The broker did not take the event within publish_timeout ({timeout:g} s):"
        f" {describe(exc)}."
    )
    if reply_lost:
        # An attempt reached Redis but its answer did not come back: it may have run.
        return (
            f"{text} The deliveries may have been queued: an attempt reached Redis but its reply"
            " was lost. Publishing the same event again (bus.publish_event with the same"
            " event) is safe, as subscribers' inboxes skip an event id they already handled;"
            " publishing the data again as a new event may deliver it twice."
        )
    return f"{text} No delivery was sent; check that Redis is reachable, then publish again."


def _not_replicated(acknowledged: int, wanted: int, timeout: float) -> str:
    return (
        f"The event's deliveries are queued on the Redis primary, but {acknowledged} of the"
        f" {wanted} replica(s) wait_for_replicas asks for acknowledged them within"
        f" wait_for_replicas_timeout ({timeout:g} s), so a failover now could lose them. They"
        " will be delivered unless the primary fails first. To be sure, publish the same event"
        " again (bus.publish_event with the same event) once the replicas are back, which"
        " subscribers' inboxes absorb; do not publish the data again as a new event, which"
        " would deliver it twice. If replicas are often missing, check them (INFO"
        " replication), or lower wait_for_replicas."
    )


def _refused(exc: BaseException) -> str:
    text = f"The broker refused the event: {describe(exc)}. No delivery was sent."
    message = str(exc)
    if "publish to the channel" in message:
        return (
            f"{text} The broker's Redis user may not publish the task-sent events that Flower"
            " shows (Redis 7 gives new users no channel rights): grant them with ACL SETUSER"
            " <user> '&*' (or allchannels), or turn the events off with the bus setting"
            " task_events=False (or the Celery setting task_send_sent_event=False)."
        )
    if isinstance(exc, redis.exceptions.NoPermissionError) or "access at least one of the keys" in message:
        return (
            f"{text} The broker's Redis user lacks rights on the event queues or the"
            " celery-events keys: grant read and write on them with ACL SETUSER <user> '~*'"
            " (or '~events.*' '~celery_events:*' and the key_prefix in use), and '+@all' or"
            " at least +evalsha, +lpush, +hset, +zadd and +publish."
        )
    return text
