import pytest

from celery_events import Reject, Retry
from celery_events._delivery import RetryPolicy


def policy(**overrides: object) -> RetryPolicy:
    options: dict[str, object] = dict(max_retries=3, backoff=2.0, backoff_max=10.0, jitter=False)
    options.update(overrides)
    return RetryPolicy(**options)  # type: ignore[arg-type]


def test_backoff_doubles_up_to_the_maximum() -> None:
    assert [policy().delay(n) for n in range(1, 6)] == [2.0, 4.0, 8.0, 10.0, 10.0]


def test_full_jitter_stays_within_the_backoff() -> None:
    delays = [policy(jitter=True).delay(3) for _ in range(200)]
    assert all(0 <= d <= 8.0 for d in delays)
    assert len(set(delays)) > 100


def test_an_asked_delay_is_used_but_capped_at_the_maximum() -> None:
    assert policy().delay(1, asked=0.5) == 0.5
    assert policy().delay(1, asked=3600) == 10.0


def test_retries_stop_after_max_retries() -> None:
    error = ConnectionError("down")
    assert [policy().should_retry(error, n) for n in (1, 2, 3, 4)] == [True, True, True, False]
    assert policy(max_retries=0).should_retry(error, 1) is False


def test_retry_for_and_dont_retry_for_choose_what_is_retried() -> None:
    chosen = policy(retry_for=(ConnectionError,), dont_retry_for=(ConnectionRefusedError,))
    assert chosen.should_retry(ConnectionResetError(), 1)
    assert not chosen.should_retry(ConnectionRefusedError(), 1)
    assert not chosen.should_retry(KeyError(), 1)
    assert chosen.should_retry(Retry(delay=1), 1)  # asking for a retry is always allowed


def test_retry_and_reject_carry_their_reason() -> None:
    assert Retry(delay=5).delay == 5
    assert str(Reject("cancelled")) == "cancelled"
    with pytest.raises(ValueError, match="delay"):
        Retry(delay=-1)
