"""Putting all deliveries of one event, or of many (``send_many``), on the broker in one round trip.

On Redis, one Lua script checks every target queue and pushes every message: Redis runs a
script atomically, so either every subscriber's queue gets its delivery or none does (a
publisher that dies mid-call, a wrong-typed key, an ACL refusal or an out-of-memory refusal
leaves nothing behind), across every event of a ``send_many`` call. A call larger than one
script should carry (:data:`MAX_DELIVERIES`, :data:`MAX_BYTES`) is refused whole, never split.
Each event's body and argument repr cross the network once; the script assembles every
delivery's payload, byte for byte what ``send_task`` stores, its ledger entry and the event's
task-sent message from them. Other brokers send through Celery's producer
(``backends/kombu.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio
from celery import Celery, signals

from ..._messages import (
    PAYLOAD_CLOSE,
    PAYLOAD_ID,
    PAYLOAD_ROOT,
    PAYLOAD_SHADOW,
    PAYLOAD_TAG,
    SentEvents,
    TaskMessage,
    payload_shared,
    redis_payload,
    redis_templated,
)
from ...errors import NotReplicatedError, PublishError, describe
from ..base import QueueReader, ServiceBus
from . import aio
from .client import ReplyLost, run_script, run_script_replicated
from .ledger import LEDGER_LUA
from .queues import BrokerQueues
from .worker import check_visibility_timeout, configure_worker

if TYPE_CHECKING:
    from ..base import Outgoing

log = logging.getLogger(__name__)
_dumps = json.dumps

# KEYS: none: every key is in ARGV. A Redis ACL checks the keys an EVALSHA declares with the
#       rights of a read-write command, so declaring the subscribers' queues and ledgers would
#       need read rights on them; undeclared, each command in the script is checked on its own,
#       so a publisher needs only the right to append (LPUSH, HSETNX, ZADD) to them (see
#       celery_events/acl.py). Redis Cluster, which needs declared keys, is not supported.
# ARGV: the number of events, ledger on ('1'/'0'), the ledger's key prefix, the time of
#       publishing, the queues' key prefix, the task-event channel ('' for no task events),
#       the task-event message's opening, separator and closing (SentEvents.call_pieces),
#       the catalog hash ('' for none); then per
#       event: its id, its number n of deliveries, whether they come whole ('1': a payload
#       the script cannot assemble, see _messages.redis_templated), its root id ('' for each
#       delivery's own task id), the three pieces of a queue payload its deliveries share
#       (_messages.payload_shared, with the quotes around the names they meet), the end of a
#       task event they share (SentEvents.event_piece), the catalog field and value ('' ''
#       for none); then per delivery its queue, handler task, shown name (JSON), task id,
#       delivery tag and service, then with task events its event's own piece
#       (SentEvents.delivery_piece; the event's message takes its first delivery's tag), then for an
#       event sent whole its payload.
#
# One copy of the data per event: Redis copies every script argument into Lua, at about 1.5
# µs per KB, so each event's body and argument repr are sent once and every delivery's queue
# payload, task event and ledger entry is joined here (table.concat: one copy, no encoding)
# from them and the few fields of its own. The task events are base64: the pieces an event
# shares are encoded once, padded to a multiple of 3 bytes (see SentEvents).
# Task events are PUBLISHed as kombu's Redis transport sends to a fanout exchange, in the same
# script, so Flower hears of exactly the deliveries that were queued: one message per event,
# the list of its deliveries' events, as Celery's dispatcher sends a group (task.multi).
#
# All or nothing, across every event of the call: Redis runs a script atomically but does not
# roll back the writes made before a command that fails (a Redis 7 ACL user without channel
# rights fails on PUBLISH, after the pushes). So before the first write the script asks the
# ACL (redis.acl_check_cmd, Redis 7) whether every command it will run is allowed, and checks
# every key's type; a refusal returns before anything is written (an undo could not be relied
# on here: a user that may only append to a queue may not LPOP it). Every write still goes
# through redis.pcall, and a failure that no check foresaw undoes the earlier writes in
# reverse order before returning the error. No other client runs in between, so LPOP takes
# back exactly the message LPUSH put at the head. The ledger is written with HSETNX and ZADD
# NX: a field or member that is already there belongs to the same delivery (a publish retried
# after a lost reply repeats its task ids) and is kept as it is, so an undo removes only what
# this call added, without reading anything first. The PUBLISHes, which cannot be undone,
# come last.
_FANOUT_LUA = """
local events, ledger, ledger_prefix = tonumber(ARGV[1]), ARGV[2] == '1', ARGV[3]
local now, key_prefix, channel = ARGV[4], ARGV[5], ARGV[6]
local sent_events = channel ~= ''
local event_open, event_between, event_close = ARGV[7], ARGV[8], ARGV[9]
local catalog_key = ARGV[10]
local FIRST, HEAD = 11, 10
local FIELDS = sent_events and 7 or 6
local ID, SHADOW, ROOT, TAG, CLOSE = %(id)s, %(shadow)s, %(root)s, %(tag)s, %(close)s
local function refused(command, key)
  return redis.error_reply('NOPERM this user has no permissions to run ' .. command ..
                           ' on ' .. key .. ', so no delivery was sent')
end
local allowed = redis.acl_check_cmd
local checked = {}
-- Once per key: may this user run command on it, and is it of the wanted type (or absent)?
local function check(key, wanted, command, ...)
  if checked[key] == wanted then return nil end
  checked[key] = wanted
  if allowed and not allowed(command, key, ...) then return refused(command, key) end
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'none' and kind ~= wanted then
    return redis.error_reply('WRONGTYPE key ' .. key .. ' holds a ' .. kind ..
                             ', not a ' .. wanted)
  end
  return nil
end
local ledgers, dues = {}, {}
local function ledger_of(service)
  local entries = ledgers[service]
  if not entries then
    entries = ledger_prefix .. 'ledger:' .. service
    ledgers[service], dues[service] = entries, entries .. ':due'
  end
  return entries, dues[service]
end
-- Where each event's fields start, how many deliveries it has, how many fields each has.
local starts, counts, widths, total = {}, {}, {}, 0
local at = FIRST
for ev = 1, events do
  local n = tonumber(ARGV[at + 1])
  local width = FIELDS
  if ARGV[at + 2] == '1' then width = width + 1 end
  starts[ev], counts[ev], widths[ev] = at, n, width
  if catalog_key ~= '' and ARGV[at + 8] ~= '' then
    local wrong = check(catalog_key, 'hash', 'HSET', 'x', 'x')
    if wrong then return wrong end
  end
  for b = at + HEAD, at + HEAD - 1 + n * width, width do
    local wrong = check(key_prefix .. ARGV[b], 'list', 'LPUSH', 'x')
    if wrong then return wrong end
    if ledger then
      local entries, due = ledger_of(ARGV[b + 5])
      wrong = check(entries, 'hash', 'HSETNX', 'x', 'x') or
              check(due, 'zset', 'ZADD', 'NX', '0', 'x')
      if wrong then return wrong end
    end
  end
  total = total + n
  at = at + HEAD + n * width
end
if sent_events and total > 0 and allowed and not allowed('PUBLISH', channel, 'x') then
  return redis.error_reply('NOPERM this user has no permissions to publish to the channel ' ..
                           channel .. ', so no delivery was sent')
end
-- What to run, in reverse, to take back this call's writes: command, key, arguments.
local undo_command, undo_key, undo_a, undo_b, undone = {}, {}, {}, {}, 0
local function remember(command, key, a, b)
  undone = undone + 1
  undo_command[undone], undo_key[undone], undo_a[undone], undo_b[undone] = command, key, a, b
end
local function rollback(reply)
  for i = undone, 1, -1 do
    if undo_b[i] ~= nil then
      redis.pcall(undo_command[i], undo_key[i], undo_a[i], undo_b[i])
    elseif undo_a[i] ~= nil then
      redis.pcall(undo_command[i], undo_key[i], undo_a[i])
    else
      redis.pcall(undo_command[i], undo_key[i])
    end
  end
  return redis.error_reply(reply['err'])
end
local function failed(reply)
  return type(reply) == 'table' and reply['err'] ~= nil
end
for ev = 1, events do
  local at, width = starts[ev], widths[ev]
  local event_id, whole, root = ARGV[at], width > FIELDS, ARGV[at + 3]
  local opening, middle, tail = ARGV[at + 4], ARGV[at + 5], ARGV[at + 6]
  for b = at + HEAD, at + HEAD - 1 + counts[ev] * width, width do
    local queue, task_id = key_prefix .. ARGV[b], ARGV[b + 3]
    local payload
    if whole then
      payload = ARGV[b + width - 1]
    else
      payload = table.concat({opening, ARGV[b + 1], ID, task_id, SHADOW, ARGV[b + 2], ROOT,
                              root ~= '' and root or task_id, middle, task_id, tail, ARGV[b],
                              TAG, ARGV[b + 4], CLOSE})
    end
    local reply = redis.pcall('LPUSH', queue, payload)
    if failed(reply) then return rollback(reply) end
    remember('LPOP', queue)
    if ledger then
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
  local field = ARGV[at + 8]
  if catalog_key ~= '' and field ~= '' then
    -- Once per name and process: reading the old value first costs little here.
    local old = redis.pcall('HGET', catalog_key, field)
    if failed(old) then return rollback(old) end
    local reply = redis.pcall('HSET', catalog_key, field, ARGV[at + 9])
    if failed(reply) then return rollback(reply) end
    if old then remember('HSET', catalog_key, field, old) else remember('HDEL', catalog_key, field) end
  end
end
if sent_events then
  -- One message per event, the list of its deliveries' task-sent events (task.multi).
  for ev = 1, events do
    local at, width, n = starts[ev], widths[ev], counts[ev]
    local shared, first = ARGV[at + 7], at + HEAD
    local pieces = {event_open, ARGV[first + 6], shared}
    for b = first + width, first - 1 + n * width, width do
      pieces[#pieces + 1] = event_between
      pieces[#pieces + 1] = ARGV[b + 6]
      pieces[#pieces + 1] = shared
    end
    pieces[#pieces + 1] = event_close
    pieces[#pieces + 1] = ARGV[first + 4]
    pieces[#pieces + 1] = CLOSE
    local reply = redis.pcall('PUBLISH', channel, table.concat(pieces))
    if failed(reply) then return rollback(reply) end
  end
end
return total
"""


def _lua_text(text: str) -> str:
    """``text`` as a Lua string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# The fixed pieces of a queue payload, from the one place that defines them.
_FANOUT_LUA = LEDGER_LUA + _FANOUT_LUA % {
    # The names between are sent unquoted (see _messages.redis_templated).
    "id": _lua_text('"' + PAYLOAD_ID),
    "shadow": _lua_text(PAYLOAD_SHADOW),
    "root": _lua_text(PAYLOAD_ROOT),
    "tag": _lua_text('"' + PAYLOAD_TAG),
    "close": _lua_text(PAYLOAD_CLOSE),
}

#: The most deliveries one fan-out script call takes: Redis runs nothing else while it runs
#: (a few µs per delivery).
MAX_DELIVERIES = 10_000
#: The most bytes of messages one call may write (each delivery's payload is assembled in
#: the script), about 0.1 s of Redis's time; far below Redis's own limits on a request
#: (proto-max-bulk-len, client-query-buffer-limit).
MAX_BYTES = 64 * 1024 * 1024


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
        """Send the deliveries of every event in ``batches`` in one script call: all of them,
        or (raising :class:`~celery_events.errors.PublishError`) none of any event.

        A call of more than :data:`MAX_DELIVERIES` deliveries or :data:`MAX_BYTES` of
        messages is refused whole, before anything is sent: Redis serves no other client
        while a script runs, and splitting the call would break its all-or-nothing promise.
        """
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
        """The events of each script call, in order (the blocking and the asyncio send share
        it): all of them in one."""
        events = [batch for batch in batches if batch[0]]
        return [events] if events else []

    def arguments(self, batches: Sequence[Outgoing]) -> list[str | int | float]:
        """The fan-out script's arguments for ``batches`` (it declares no keys), once the
        ``before_task_publish`` receivers have run; ``script`` runs them, and
        :meth:`finish` reads its reply. Shared by the blocking and the asyncio publish.

        Raises :class:`~celery_events.errors.PublishError` for a call too large for one
        script (see :meth:`send_many`).
        """
        batches = [batch for batch in batches if batch[0]]
        _check_size(batches)
        ledger = self.ledger_prefix
        events = self._sent_events
        if events is not None and not events.enabled:
            events = None
        now = time.time()
        args: list[str | int | float] = [
            len(batches),
            "0" if ledger is None else "1",
            ledger or "",
            now,
            self.key_prefix,
        ]
        if events is not None:
            args.append(events.multi_channel)
            args.extend(events.call_pieces())
        else:
            args.extend(("", "", "", ""))
        args.append(self.catalog_key or "")
        forward = events.clock_forward() if events is not None else None
        for messages, catalog in batches:
            parts = messages[0].parts
            whole = not all(redis_templated(m) for m in messages)
            opening, middle, tail = payload_shared(parts)
            args += [
                messages[0].event_id,
                len(messages),
                "1" if whole else "0",
                parts.root_id or "",
                opening + '"',
                middle,
                tail + '"',
                events.event_piece(parts) if events is not None else "",
            ]
            if catalog is not None and self.catalog_key is not None:
                args.extend(catalog)
            else:
                args.extend(("", ""))
            for m in messages:
                args += [m.queue, m.task_name, _dumps(m.shadow), m.task_id, m.delivery_tag, m.service]
                if events is not None and forward is not None:
                    args.append(events.delivery_piece(m, forward(), now))
                if whole:
                    args.append(redis_payload(m))
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


def _check_size(batches: Sequence[Outgoing]) -> None:
    deliveries = sum(len(messages) for messages, _ in batches)
    # What the script writes: each delivery's payload (the event's body and argument repr,
    # about 1 KB of headers), its ledger copy and its task event.
    written = sum(
        len(messages) * 3 * (len(messages[0].parts.body_b64) + len(messages[0].parts.argsrepr) + 1024)
        for messages, _ in batches
    )
    if deliveries <= MAX_DELIVERIES and written <= MAX_BYTES:
        return
    raise PublishError(
        f"The {len(batches)} event(s) of this publish make {deliveries} deliveries and about"
        f" {written // (1024 * 1024)} MB of messages, more than one atomic Redis script may"
        f" write ({MAX_DELIVERIES} deliveries, {MAX_BYTES // (1024 * 1024)} MB): Redis serves"
        " no other client while it runs. Nothing was sent; publish the events in smaller"
        " calls (each call is all or nothing on its own)."
    )


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
