"""The demo's stop signals: recorded by the handler, acted on by the runner's own code.

A handler that raised could land inside a finalizer, where Python prints "Exception ignored"
and carries on (issue 10: ``ConnectionPool.__del__ ... Interrupted: SIGTERM``, and the demo
ran on). No server is needed: the signals are sent to this test process.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator

import pytest

from ..harness import ROOT

sys.path.insert(0, str(ROOT / "example_project"))

from demo_runner.stopping import Interrupted, StopRequest  # noqa: E402


@pytest.fixture
def request_on_sigterm() -> Iterator[StopRequest]:
    stop = StopRequest()
    old = signal.getsignal(signal.SIGTERM)
    stop.install([signal.SIGTERM])
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, old)


class SignalsItselfWhenCollected:
    """Like a connection pool whose ``__del__`` runs when the stop signal arrives."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        total = 0
        for i in range(1000):  # the handler runs here, between two bytecodes of __del__
            total += i


def test_a_stop_signal_that_lands_in_a_finalizer_is_not_lost(
    request_on_sigterm: StopRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the runner's handler, When SIGTERM arrives while a finalizer runs
    SignalsItselfWhenCollected()

    # Then nothing was "ignored", and the next check stops the runner
    assert "Exception ignored" not in capsys.readouterr().err
    assert request_on_sigterm.signal == "SIGTERM"
    with pytest.raises(Interrupted, match="SIGTERM"):
        request_on_sigterm.check()


def test_a_wait_ends_soon_after_the_signal(request_on_sigterm: StopRequest) -> None:
    # Given a long wait, When SIGTERM arrives during it, Then it raises well before its end
    def at_once(signum: int, frame: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    old = signal.signal(signal.SIGALRM, at_once)
    signal.setitimer(signal.ITIMER_REAL, 0.1)
    started = time.monotonic()
    try:
        with pytest.raises(Interrupted):
            request_on_sigterm.sleep(30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - started < 5


def test_the_first_signal_is_the_one_reported(request_on_sigterm: StopRequest) -> None:
    request_on_sigterm.install([signal.SIGHUP])
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)
        request_on_sigterm.sleep(0)
    except Interrupted as exc:
        assert str(exc) == "SIGHUP"
    else:
        raise AssertionError("the stop request was not seen")
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
