"""A worker inside the test process: takes deliveries off a bus's queues and runs each through
Celery's own task tracer, as a ``celery worker`` does, so the real delivery task decides
(inbox, handler, retry, dead letter).

It is meant for the memory backend (``Celery(broker="memory://")``): the queues are kombu's
in-process ones, a retry is the message Celery's ``Task.retry`` publishes (its wait is
skipped, and the delay it asked for recorded), and nothing runs in another thread. It reads the
queues with ``basic_get``, which every kombu transport has.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery import states
from celery.app.trace import trace_task
from celery.exceptions import Retry as CeleryRetry
from celery.worker.request import Request

from ..errors import CeleryEventsError

if TYPE_CHECKING:
    from ..bus import EventBus

__all__ = ["Execution", "InProcessWorker"]

HOSTNAME = f"celery@testing.{socket.gethostname()}"


@dataclass
class Execution:
    """One run of one delivery message through the task."""

    task_id: str
    handler: str
    #: The event id the envelope names ("" when it names none).
    event_id: str
    #: ``succeeded``, ``retry`` or ``failed`` (Celery's outcome of the task).
    outcome: str
    #: For ``retry``: the seconds Celery was asked to wait; for ``failed``: the exception.
    countdown: float | None = None
    error: BaseException | None = None
    #: Whether the delivery found its event already handled and did not run the handler.
    skipped: bool = False


@dataclass
class _Skips:
    """``(handler, event id)`` of deliveries the delivery path reported as already handled."""

    found: set[tuple[str, str]] = field(default_factory=set)


class _SkipListener(logging.Handler):
    # The delivery path says "already handled" in one log record per skipped delivery (the
    # Redis or memory inbox, or a database inbox through the transaction runner); its first
    # two arguments are the handler and the event id.
    def __init__(self, skips: _Skips) -> None:
        super().__init__(logging.INFO)
        self.skips = skips

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if "already handled" in str(record.msg) and isinstance(args, tuple) and len(args) >= 2:
            self.skips.found.add((str(args[0]), str(args[1])))


@contextmanager
def _listening(skips: _Skips) -> Iterator[None]:
    # The logger of the delivery task's module, which writes those records.
    logger = logging.getLogger("celery_events._delivery")
    listener = _SkipListener(skips)
    level = logger.level
    logger.addHandler(listener)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(listener)
        logger.setLevel(level)


class InProcessWorker:
    """Consumes a bus's queues in this process and runs every delivery it takes."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.app = bus.app

    def work(
        self,
        *,
        wanted: Callable[[str, bool], bool],
        on_execution: Callable[[Execution], None],
    ) -> int:
        """Run the deliveries waiting on the bus's queues, and the retries they publish,
        until none is left that ``wanted(task_id, is_retry)`` accepts; returns how many ran.

        A message not wanted goes back on its queue.
        """
        ran = 0
        with self.app.connection_for_read() as connection:
            channel = connection.default_channel
            while True:
                taken = list(self._take(channel, self.bus.queues))
                chosen = []
                for message in taken:
                    headers = message.headers or {}
                    is_retry = bool(headers.get("retries")) or headers.get("eta") is not None
                    if wanted(str(headers.get("id")), is_retry):
                        chosen.append(message)
                    else:
                        message.requeue()
                if not chosen:
                    return ran
                for message in chosen:
                    on_execution(self._execute(message))
                    ran += 1

    @staticmethod
    def _take(channel: Any, queues: Iterable[str]) -> Iterator[Any]:
        for queue in queues:
            while True:
                message = channel.basic_get(queue)
                if message is None:
                    break
                yield message

    def _execute(self, message: Any) -> Execution:
        app = self.app
        headers = message.headers
        task = app.tasks.get(headers.get("task"))
        if task is None:
            message.requeue()
            raise CeleryEventsError(
                f"A message on a queue of service {self.bus.service!r} is for the task"
                f" {headers.get('task')!r}, which its app does not have (left over from another"
                " test's app?). Empty the memory backend between tests with"
                " celery_events.backends.memory.reset(), or the handler_runner fixture."
            )
        request = Request(
            message,
            app=app,
            task=task,
            hostname=HOSTNAME,
            on_ack=lambda *_: None,
            on_reject=lambda *_: None,
        )
        args = request.args
        envelope = args[0] if len(args) == 1 else None
        event_id = envelope.get("id") if isinstance(envelope, dict) else None
        details = dict(request.request_dict, is_eager=False, loglevel=None, logfile=None)
        skips = _Skips()
        with _listening(skips):
            _, info, _, _ = trace_task(
                task, request.id, args, request.kwargs, details,
                hostname=HOSTNAME, loader=app.loader, app=app,
            )
        handler = str(headers["task"])
        execution = Execution(
            task_id=request.id,
            handler=handler,
            event_id=event_id if isinstance(event_id, str) else "",
            outcome="succeeded",
            skipped=(handler, str(event_id)) in skips.found,
        )
        if info is None:
            message.ack()
        elif info.state == states.RETRY:
            retry = info.retval
            execution.outcome = "retry"
            when = retry.when if isinstance(retry, CeleryRetry) else None
            execution.countdown = float(when) if isinstance(when, (int, float)) else 0.0
            execution.error = retry.exc if isinstance(retry, CeleryRetry) else None
            message.ack()  # the retry is a message of its own, on the queue already
        elif info.state == states.REJECTED and getattr(info.retval, "requeue", False):
            message.requeue()
            execution.outcome = "failed"
            execution.error = info.retval
        else:
            execution.outcome = "failed"
            execution.error = info.retval
            message.ack()  # acks_on_failure_or_timeout: dead-lettered by the task
        return execution
