"""Riding out a state-store outage: calls sent again with backoff, one warning per outage."""

from __future__ import annotations

import logging

import pytest

from celery_events import _outage
from celery_events._outage import HAND_BACK_MAX, OutageLog, hand_back_countdown, ride_out
from celery_events.backends.base import StoreError, StoreUnavailable


@pytest.fixture(autouse=True)
def fresh_outage_log(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each test starts with the store up, whatever the one before left.
    monkeypatch.setattr(_outage, "outages", OutageLog())


class Flaky:
    """Fails ``failures`` times with StoreUnavailable, then answers ``"ok"``."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise StoreUnavailable("Connection refused")
        return "ok"


def test_a_call_is_sent_again_with_growing_bounded_pauses_until_the_store_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pauses: list[float] = []
    call = Flaky(8)
    with caplog.at_level(logging.WARNING, logger="celery_events._outage"):
        assert ride_out(call, "claim", patience=60, sleep=pauses.append) == "ok"
    assert call.calls == 9
    assert pauses == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    # One warning when it went away, one when it came back: not one per attempt.
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "the state store is unreachable (claim: Connection refused)" in messages[0]
    assert "the state store is back" in messages[1]


def test_the_last_error_is_raised_once_patience_is_spent() -> None:
    call = Flaky(10**6)
    with pytest.raises(StoreUnavailable):
        ride_out(call, "claim", patience=0, sleep=lambda s: None)
    assert call.calls == 1


def test_other_errors_are_not_ridden_out() -> None:
    def broken() -> None:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        ride_out(broken, "claim", patience=60, sleep=lambda s: None)


def test_a_store_that_refuses_is_named_as_failing_with_the_backends_fix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = OutageLog()
    with caplog.at_level(logging.WARNING, logger="celery_events._outage"):
        outage.failed("dead letter", StoreError("NOPERM", "grant the user write rights"))
        outage.failed("dead letter", StoreError("NOPERM", "grant the user write rights"))
    assert [r.getMessage() for r in caplog.records] == [
        "celery-events: the state store is failing (dead letter: NOPERM) (grant the user write"
        " rights); deliveries wait for it and are handed back to the broker if it stays away,"
        " none is acknowledged unhandled"
    ]


@pytest.mark.parametrize("retries", [0, 1, 5, 50, 10**6])
def test_a_handed_back_delivery_waits_a_bounded_jittered_backoff(retries: int) -> None:
    base = min(HAND_BACK_MAX, 2.0**min(retries, 16))
    for _ in range(20):
        assert base / 2 <= hand_back_countdown(retries) <= base <= HAND_BACK_MAX
