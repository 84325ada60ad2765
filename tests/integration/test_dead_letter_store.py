"""The dead-letter store against a real Redis, without workers."""

from __future__ import annotations

import time

import pytest
import redis

from celery_events import DeadLetterNotFound, ReplayError
from celery_events.backends.redis.stores import RedisState
from celery_events.deadletters import DeadLetterStore, Reason, new_letter


def letter(n: int, handler: str | None = "orders.welcome") -> object:
    return new_letter(
        service="orders",
        reason=Reason.REJECTED,
        error=ValueError(f"bad {n}"),
        handler=handler,
        envelope={"id": f"e{n}", "type": "user.registered", "data": {}},
        attempts=1,
        queue="events.orders",
    )


def test_a_size_limit_drops_the_oldest_and_says_so(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    store = DeadLetterStore(RedisState(redis_client, "celery_events:").dead_letters("orders"), "orders", limit=2)
    letters = []
    for n in range(3):
        letters.append(store.add(letter(n)))  # type: ignore[arg-type]
        time.sleep(0.01)  # distinct failure times order the index
    assert [d.event_id for d in store.list()] == ["e2", "e1"]
    assert "dropped the 1 oldest dead letter(s) of service 'orders'" in caplog.text
    assert letters[0].id in caplog.text


def test_without_a_limit_nothing_is_dropped(redis_client: redis.Redis) -> None:
    store = DeadLetterStore(RedisState(redis_client, "celery_events:").dead_letters("orders"), "orders")
    for n in range(50):
        store.add(letter(n))  # type: ignore[arg-type]
    assert store.count() == 50
    assert len(store.list(limit=None)) == 50
    assert len(store.list()) == 50 and len(store.list(limit=10)) == 10


def test_unattributed_letters_cannot_be_replayed_but_can_be_purged(
    redis_client: redis.Redis,
) -> None:
    sent: list[tuple[object, str, str]] = []
    store = DeadLetterStore(
        RedisState(redis_client, "celery_events:").dead_letters("orders"), "orders", resend=lambda e, h, q: sent.append((e, h, q)) or "task"
    )
    orphan = store.add(letter(1, handler=None))  # type: ignore[arg-type]
    with pytest.raises(ReplayError, match="cannot be replayed"):
        store.replay(orphan.id)
    assert sent == [] and store.count() == 1
    assert store.purge(orphan.id) == 1
    with pytest.raises(DeadLetterNotFound):
        store.purge(orphan.id)
