"""Putting all deliveries of one event on the broker in one round trip.

On Redis, one Lua script checks every target queue and pushes every message: Redis runs a
script atomically, so either every subscriber's queue gets its delivery or none does (a
publisher that dies mid-call, a wrong-typed key or an out-of-memory refusal leaves nothing
behind). On other brokers, kombu's producer sends the messages over one connection; there
fan-out is not atomic, and RabbitMQ users should turn on publisher confirms.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

import redis
from celery import Celery, signals

from ._inbox import ledger_entry
from ._messages import TaskMessage, redis_payload
from .errors import PublishError

log = logging.getLogger(__name__)

# KEYS: n queue lists, then (with the ledger) n pairs of ledger hash and due set, then
#       (optionally) the catalog hash.
# ARGV: n, ledger on ('1'/'0'), the time of publishing, n payloads,
#       (with the ledger) n task ids and n ledger entries, then (optionally) the catalog
#       field and value.
_FANOUT_LUA = """
local n = tonumber(ARGV[1])
local ledger = ARGV[2] == '1'
for i = 1, n do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind ~= 'none' and kind ~= 'list' then
    return redis.error_reply('WRONGTYPE queue key ' .. KEYS[i] .. ' holds a ' .. kind)
  end
end
for i = 1, n do
  redis.call('LPUSH', KEYS[i], ARGV[3 + i])
end
local used_keys, used_args = n, 3 + n
if ledger then
  for i = 1, n do
    local task_id = ARGV[3 + n + i]
    redis.call('HSET', KEYS[n + 2 * i - 1], task_id, ARGV[3 + 2 * n + i])
    redis.call('ZADD', KEYS[n + 2 * i], ARGV[3], task_id)
  end
  used_keys, used_args = 3 * n, 3 + 3 * n
end
if #KEYS > used_keys then
  redis.call('HSET', KEYS[used_keys + 1], ARGV[used_args + 1], ARGV[used_args + 2])
end
return n
"""


class Fanout(Protocol):
    def send(self, messages: Sequence[TaskMessage], catalog: tuple[str, str, str] | None) -> None:
        """Send every message, or raise :class:`PublishError` having sent none."""


def _fire_before(message: TaskMessage) -> None:
    # Tracing tools (Sentry, OpenTelemetry) add headers here, so it runs before encoding.
    if signals.before_task_publish.receivers:
        signals.before_task_publish.send(
            sender=message.task_name,
            body=message.body,
            exchange="",
            routing_key=message.queue,
            declare=[],
            headers=message.headers,
            properties=message.properties,
            retry_policy=None,
        )


def _fire_after(message: TaskMessage) -> None:
    if signals.after_task_publish.receivers:
        signals.after_task_publish.send(
            sender=message.task_name,
            body=message.body,
            headers=message.headers,
            exchange="",
            routing_key=message.queue,
        )


class RedisFanout:
    """Sends deliveries straight to kombu's Redis queue lists with one atomic script."""

    def __init__(
        self,
        client: redis.Redis,
        timeout: float,
        *,
        key_prefix: str = "",
        ledger_prefix: str | None = None,
    ) -> None:
        self.client = client
        self.timeout = timeout
        # kombu's global_keyprefix transport option prefixes every queue key.
        self.key_prefix = key_prefix
        # Where deliveries are recorded until handled (see _inbox.py); None: not recorded.
        self.ledger_prefix = ledger_prefix
        self._script = client.register_script(_FANOUT_LUA)

    def send(self, messages: Sequence[TaskMessage], catalog: tuple[str, str, str] | None) -> None:
        for message in messages:
            _fire_before(message)
        keys = [self.key_prefix + m.queue for m in messages]
        payloads = [redis_payload(m) for m in messages]
        ledger = self.ledger_prefix is not None
        args: list[str | int | float] = [
            len(messages),
            "1" if ledger else "0",
            time.time(),
        ]
        args.extend(payloads)
        if self.ledger_prefix is not None:
            for message in messages:
                base = f"{self.ledger_prefix}ledger:{message.service}"
                keys.extend((base, f"{base}:due"))
            args.extend(m.headers["id"] for m in messages)
            args.extend(
                ledger_entry(key, payload, m.event_id, m.task_name)
                for key, payload, m in zip(keys, payloads, messages, strict=False)
            )
        if catalog is not None:
            keys.append(catalog[0])
            args.extend(catalog[1:])
        self._run(keys, args)
        for message in messages:
            _fire_after(message)

    def _run(self, keys: list[str], args: list[str | int | float]) -> None:
        deadline = time.monotonic() + self.timeout
        pause = 0.05
        while True:
            try:
                self._script(keys=keys, args=args, client=self.client)
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # The script runs whole or not at all; a lost reply may mean it ran, and then
                # the retry repeats deliveries with the same ids, which the inbox absorbs.
                left = deadline - time.monotonic()
                if left <= pause:
                    raise PublishError(
                        f"The broker did not take the event within publish_timeout"
                        f" ({self.timeout:g} s): {exc}. No delivery was sent; check that"
                        " Redis is reachable, then publish again."
                    ) from exc
                log.warning("celery-events: publish failed, retrying: %s", exc)
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
            except redis.RedisError as exc:
                raise PublishError(
                    f"The broker refused the event: {exc}. No delivery was sent."
                ) from exc


class KombuFanout:
    """Sends deliveries through Celery's producer, for brokers other than Redis."""

    def __init__(self, app: Celery, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    def send(self, messages: Sequence[TaskMessage], catalog: tuple[str, str, str] | None) -> None:
        send = self.app.amqp.send_task_message
        policy = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 1}
        try:
            with self.app.producer_or_acquire() as producer:
                for message in messages:
                    send(
                        producer,
                        message.task_name,
                        (message.headers, message.properties, message.body, None),
                        exchange="",
                        routing_key=message.queue,
                        queue=message.queue,
                        retry=True,
                        retry_policy=policy,
                        timeout=self.timeout,
                        confirm_timeout=self.timeout,
                    )
        except Exception as exc:  # kombu raises transport-specific errors
            raise PublishError(
                f"The broker did not take the event: {exc}. Some deliveries may have been sent"
                " (fan-out is atomic on Redis only)."
            ) from exc
