"""Stopping on Ctrl-C, SIGTERM or SIGHUP: the signal handler only records the request.

A Python signal handler runs between two bytecodes of whatever the main thread happens to be
doing. One that raised could land inside a finalizer (a redis ``ConnectionPool.__del__``, say),
where Python prints "Exception ignored in: ..." and carries on, so the demo would run on after
being told to stop. So the handler only sets an attribute, which cannot fail wherever it lands
(no lock is taken, unlike ``threading.Event.set``), and the runner's loops and start-up steps
call :meth:`StopRequest.check`, which raises :class:`Interrupted` from ordinary code.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterable
from types import FrameType


class Interrupted(Exception):
    """Ctrl-C, SIGTERM or SIGHUP: time to stop everything."""


class StopRequest:
    """Whether a stop signal came, and which; waits that end early when one does."""

    #: How often a wait looks at the request: the longest a stop waits for a sleeping loop.
    POLL = 0.05

    def __init__(self) -> None:
        #: The first stop signal's name, or None.
        self.signal: str | None = None

    def install(self, signals: Iterable[signal.Signals]) -> None:
        for signum in signals:
            signal.signal(signum, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        # Only an assignment: this must not raise, whatever it interrupted.
        if self.signal is None:
            self.signal = signal.Signals(signum).name

    def check(self) -> None:
        """Raise :class:`Interrupted` if a stop signal came."""
        if self.signal is not None:
            raise Interrupted(self.signal)

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, raising :class:`Interrupted` as soon as a stop signal comes."""
        deadline = time.monotonic() + seconds
        while True:
            self.check()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(self.POLL, left))


#: The runner's one stop request: signal handlers are per process, and so is this.
STOP = StopRequest()
