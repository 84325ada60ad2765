"""The asyncio publish (``bus.apublish``, ``bus.apublish_many``): publish's own path, with
the send awaited instead of waited for.

It is ``publish_many``'s path (``_publish.py``) in its three parts: :meth:`Publisher.
prepare_many` (scopes, middleware, matching, messages), ``await transport.asend_many`` (on
Redis a ``redis.asyncio`` client of the running loop; elsewhere the blocking send in a worker
thread), then :meth:`Publisher.sent` (``on_published`` listeners, the catalog). So every event
meets the same validation, middleware and errors as with ``publish``, and the same guarantee:
on Redis every delivery of a call is queued or none is.

The parts around the send are CPU work of microseconds and run on the loop, except where
they would wait on I/O, which then runs in a worker thread (``asyncio.to_thread``):

- the registry's cached view is missing or older than ``registry_max_staleness`` (its
  background check has not run yet, or fails): matching would read the registry, so the
  preparing part runs in a thread, and raises there what ``publish`` raises;
- a middleware declares ``publishes_with_io`` (trace records, Django's transactions): both
  parts run in a thread. A coroutine is never inside a Django ``atomic`` block (they are
  synchronous), so publish-on-commit sends at once and the outbox writes its row in a
  transaction of its own, as for a ``publish`` outside any transaction;
- an event nobody subscribes to, the first of its name in this process: the catalog's write
  runs in a thread.

On the loop, the preparing parts of concurrent publishes take turns (:class:`_Turns`): at
most about 0.5 ms of them run before the loop gets to its other work (timers, I/O, other
tasks), so that a burst of publishes (100 requests at once) never holds the loop for long.

A caller cancelled while the send is under way stops waiting for it; on Redis the script ran
whole or not at all, so the event is either sent to every subscriber or to none, as after a
``PublishError`` whose reply was lost (its ``on_published`` listeners are not told).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ._publish import PreparedBatch, Publisher
from .envelope import Event
from .errors import PartialPublishError
from .results import PublishResult

__all__ = ["apublish"]

T = TypeVar("T")

#: How long the preparing parts of publishes may hold the loop before it runs other work.
TURN_SECONDS = 0.0005


class _Turns:
    """The CPU parts of one event loop's publishes, run in order, a turn at a time.

    Each runs in its caller's context (its contextvars: the handled event, a trace span):
    at once while the loop's current pass has had less than a turn of them and nobody waits,
    else through a worker task.
    Between turns the worker sleeps on a timer, not ``sleep(0)``: the loop's overdue timers
    and ready tasks then come before the next turn.
    """

    def __init__(self) -> None:
        self._queue: deque[tuple[contextvars.Context, Callable[[], Any], asyncio.Future[Any]]] = (
            deque()
        )
        self._working = False
        # The running worker (the loop keeps only a weak reference to a task).
        self._worker: asyncio.Task[None] | None = None
        # Seconds of work run at once (not through the worker) since the loop's last pass
        # began, and whether a callback that zeroes it at the next pass is scheduled.
        self._spent = 0.0
        self._counting = False

    def _new_pass(self) -> None:
        self._spent = 0.0
        self._counting = False

    async def run(self, work: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        if not self._working and self._spent < TURN_SECONDS:
            # Nobody waits, and this pass of the loop has had less than a turn of publish
            # work: run it now, without a hop through the worker (a lone publisher's case).
            if not self._counting:
                self._counting = True
                loop.call_soon(self._new_pass)
            started = time.perf_counter()
            try:
                return work()
            finally:
                self._spent += time.perf_counter() - started
        done: asyncio.Future[T] = loop.create_future()
        self._queue.append((contextvars.copy_context(), work, done))
        if not self._working:
            self._working = True
            self._worker = loop.create_task(self._work())
        return await done

    async def _work(self) -> None:
        try:
            while self._queue:
                ends = time.perf_counter() + TURN_SECONDS
                while self._queue and time.perf_counter() < ends:
                    context, work, done = self._queue.popleft()
                    if done.done():  # its caller was cancelled
                        continue
                    try:
                        result = context.run(work)
                    except BaseException as exc:
                        done.set_exception(exc)
                        if not isinstance(exc, Exception):
                            raise
                    else:
                        done.set_result(result)
                if self._queue:
                    await asyncio.sleep(1e-6)
        finally:
            self._working = False
            if self._queue:
                # Stopped by what no caller should swallow (KeyboardInterrupt): the others
                # waiting are served by a new worker rather than left waiting.
                self._worker = asyncio.get_running_loop().create_task(self._work())
                self._working = True


_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Turns] = weakref.WeakKeyDictionary()


def _loop_turns() -> _Turns:
    loop = asyncio.get_running_loop()
    turns = _turns.get(loop)
    if turns is None:
        turns = _turns[loop] = _Turns()
    return turns


async def apublish(
    bus: Any,
    make: Callable[[], Sequence[tuple[Event, str]]],
    require_subscribers: bool | None,
    *,
    name_index: bool,
) -> list[PublishResult]:
    """Make the events of the EventBus ``bus`` (``make``: ``Publisher.make_event`` or
    ``make_many``, which validate) and send them from the running loop; one result per
    event, in order."""
    publisher: Publisher = bus._publisher
    blocking = publisher.chain.publishes_with_io

    def prepare() -> PreparedBatch | None:
        items = make()
        if not items:
            return None
        return publisher.prepare_many(items, require_subscribers, name_index=name_index)

    if blocking or not bus.registry.is_fresh():
        batch = await asyncio.to_thread(prepare)
    else:
        batch = await _loop_turns().run(prepare)
    if batch is None:
        return []
    failure: PartialPublishError | None = None
    if batch.outgoing:
        try:
            await bus.transport.asend_many(batch.outgoing)
        except PartialPublishError as exc:
            failure = exc
    offload = blocking or _records_catalog(bus, batch)
    if failure is not None:
        error = (
            await asyncio.to_thread(publisher.send_failed, batch, failure)
            if offload
            else publisher.send_failed(batch, failure)
        )
        raise error from failure
    if offload:
        return await asyncio.to_thread(publisher.sent, batch)
    return publisher.sent(batch)


def _records_catalog(bus: Any, batch: PreparedBatch) -> bool:
    """Whether telling of the batch writes the catalog (a name first published with nobody
    subscribed, which the deliveries' script did not record)."""
    known = bus._published_names
    return any(
        prepared.collected and not prepared.messages and prepared.event.name not in known
        for prepared in batch.events
    )
