"""The Redis inbox remembers each handled delivery as a small field in a hash grouped by the
event's minute (``backends/redis/inbox.py``): exactly (no event it did not handle counts as
handled, none it handled within ``inbox_ttl`` counts as new), for ``inbox_ttl`` after it was
recorded, whatever the event's time, and nothing of it is left once the window passed."""

from __future__ import annotations

import time
import uuid

import redis
from celery import Celery

from celery_events import EventBus
from celery_events.backends.base import lease_value
from celery_events.backends.redis.inbox import Inbox, done_field

from ..harness import wait_until
from .conftest import effect_counts

PREFIX = "celery_events:"
HANDLER = "shop.ship"
#: An event time (any fixed minute), so that many events share one group.
MINUTE = 1_700_000_040.0


def handle(inbox: Inbox, event_id: str, at: float, ttl: float = 3600.0) -> str:
    """One delivery as a worker runs it: claim, then (the handler done) succeed."""
    task_id = uuid.uuid4().hex
    lease = lease_value(task_id, inbox.process_token())
    claim = inbox.claim(
        HANDLER, event_id, task_id, event_time=at, lease=lease, lease_seconds=60, use_inbox=True
    )
    if claim.status == "run":
        assert inbox.succeed(
            HANDLER,
            event_id,
            task_id,
            event_time=at,
            lease=lease,
            use_inbox=True,
            ttl_seconds=ttl,
        )
    return claim.status


def test_every_handled_event_and_no_other_is_done_across_groups_and_levels(
    redis_client: redis.Redis,
) -> None:
    # Given 3,000 events in one minute (markers on four levels) and 300 spread over many
    # minutes, with ids of every shape: UUIDs, other strings (one of 15 bytes, one of 16)
    inbox = Inbox(redis_client, "shop", PREFIX)
    crowded = [str(uuid.uuid4()) for _ in range(3000)]
    spread = [f"order-{n}" for n in range(300)]
    odd = ["x" * 15, "y" * 16, "é" * 8, str(uuid.uuid4()).replace("-", "")]
    handled = (
        [(event_id, MINUTE + n % 60) for n, event_id in enumerate(crowded)]
        + [(event_id, MINUTE + 37 * n) for n, event_id in enumerate(spread)]
        + [(event_id, MINUTE) for event_id in odd]
    )
    # When each is handled once
    assert {handle(inbox, event_id, at) for event_id, at in handled} == {"run"}
    # Then each is done, and a second delivery of it is skipped
    assert all(inbox.is_done(HANDLER, event_id, event_time=at) for event_id, at in handled)
    assert {handle(inbox, event_id, at) for event_id, at in handled[::50]} == {"done"}
    # And no other event is, in the same groups: other ids, other spellings of a handled UUID
    others = [str(uuid.uuid4()) for _ in range(3000)] + [f"order-{n}" for n in range(300, 600)]
    others += [crowded[0].upper(), crowded[1].replace("-", ""), "x" * 16, "y" * 15]
    assert not any(inbox.is_done(HANDLER, event_id, event_time=MINUTE) for event_id in others)
    assert not any(
        inbox.is_done(HANDLER, event_id, event_time=MINUTE + 37 * n)
        for n, event_id in enumerate(others[:300])
    )
    # And one handled event asked about with another minute is another event
    assert not inbox.is_done(HANDLER, spread[5], event_time=MINUTE)
    # And every hash stays small enough for Redis to keep it compact
    groups = list(redis_client.scan_iter(f"{PREFIX}done:*", count=1000))
    assert {redis_client.object("encoding", key) for key in groups} == {b"listpack"}
    # (the crowded minute holds 3,000 + the odd 4 + the first two of the spread)
    assert redis_client.hget(f"{PREFIX}done:{HANDLER}:{int(MINUTE // 60)}", "n") == b"3006"


def test_compact_fields_never_make_two_ids_one() -> None:
    ids = [str(uuid.uuid4()), "a" * 15, "a" * 16, "\xfe" + "a" * 14, "é" * 8, ""]
    ids += [ids[0].upper(), "{" + ids[0] + "}", ids[0].replace("-", "")]
    fields = [done_field(event_id) for event_id in ids]
    assert len(set(fields)) == len(ids)
    assert len(fields[0]) == 16 and all(len(field) != 16 for field in fields[1:])


def test_a_marker_lives_for_the_window_after_it_was_recorded_then_nothing_is_left(
    redis_client: redis.Redis,
) -> None:
    # Given a short window, and an event handled with it
    inbox = Inbox(redis_client, "shop", PREFIX)
    at = time.time()
    assert handle(inbox, "e-1", at, ttl=2.0) == "run"
    recorded = time.monotonic()
    # Then within the window a copy is skipped
    assert handle(inbox, "e-1", at, ttl=2.0) == "done"
    assert time.monotonic() - recorded < 2.0, "too slow to look inside the window"
    # And once it passed, the event counts as new, and no key of its group is left
    wait_until(lambda: not inbox.is_done(HANDLER, "e-1", event_time=at), timeout=10, what="expiry")
    assert time.monotonic() - recorded >= 2.0
    assert list(redis_client.scan_iter(f"{PREFIX}done:*")) == []
    assert list(redis_client.scan_iter(f"{PREFIX}inbox:*")) == []
    assert list(redis_client.scan_iter(f"{PREFIX}delivery:*")) == []


def test_an_event_handled_late_is_remembered_for_the_window_from_then(
    redis_client: redis.Redis,
) -> None:
    # Given an event published two days ago (its minute long past), handled now
    inbox = Inbox(redis_client, "shop", PREFIX)
    long_ago = time.time() - 2 * 86400
    assert handle(inbox, "late-1", long_ago, ttl=600.0) == "run"
    # Then its copies are skipped, and its group lives the window from now
    assert handle(inbox, "late-1", long_ago, ttl=600.0) == "done"
    [group] = redis_client.scan_iter(f"{PREFIX}done:*")
    assert 590_000 < redis_client.pttl(group) <= 600_000


def test_a_record_written_by_an_earlier_version_still_counts(redis_client: redis.Redis) -> None:
    # Given a delivery recorded the old way (the key `done` for the window)
    inbox = Inbox(redis_client, "shop", PREFIX)
    redis_client.set(f"{PREFIX}inbox:{HANDLER}:old-1", "done", px=60_000)
    # Then it is done, and a copy of it is skipped
    assert inbox.is_done(HANDLER, "old-1", event_time=MINUTE)
    assert handle(inbox, "old-1", MINUTE) == "done"


def test_effects_commit_once_with_the_record(redis_client: redis.Redis) -> None:
    # Given a delivery whose run outlived its lease, and a second copy that took it over
    inbox = Inbox(redis_client, "shop", PREFIX)
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    leases = {task: lease_value(task, inbox.process_token()) for task in (first, second)}

    def claim(task: str) -> str:
        return inbox.claim(
            HANDLER,
            "e-9",
            task,
            event_time=MINUTE,
            lease=leases[task],
            lease_seconds=60,
            use_inbox=True,
        ).status

    def succeed(task: str) -> bool:
        effects = inbox.new_effects()
        effects.incr("shipped")
        return inbox.succeed(
            HANDLER,
            "e-9",
            task,
            event_time=MINUTE,
            lease=leases[task],
            use_inbox=True,
            ttl_seconds=60,
            effects=effects,
        )

    assert claim(first) == "run"
    redis_client.delete(f"{PREFIX}inbox:{HANDLER}:e-9")  # its lease time passed
    assert claim(second) == "run"
    # When both finish, the second first, each with a Redis effect
    assert succeed(second)
    # Then the first finds the record and drops its effect: it counts once
    assert not succeed(first)
    assert redis_client.get("shipped") == b"1"
    assert inbox.is_done(HANDLER, "e-9", event_time=MINUTE)
    assert claim(first) == "done"


def test_a_worker_acknowledges_a_delivery_with_its_success_record(
    start_worker, redis_client: redis.Redis, redis_url: str
) -> None:
    # Given a prefork worker, and the Redis's command counts from now
    start_worker("tests.services.orders", env={"ORDERS_WITHOUT_AUDIT": "1"}, args=["-P", "prefork"])
    publisher = EventBus(Celery("users", broker=redis_url), service="users")
    publisher.registry.refresh()
    redis_client.config_resetstat()
    # When 40 events are delivered and handled
    ids = [publisher.publish("user.registered", {"user_id": n}).event.id for n in range(40)]
    publisher.close()
    wait_until(
        lambda: set(effect_counts(redis_client)) == {("orders.welcome_order", i) for i in ids},
        timeout=30,
        what="every delivery handled",
    )
    # Then each was handled once and its message is acknowledged: nothing is left unacked
    assert set(effect_counts(redis_client).values()) == {1}
    wait_until(lambda: redis_client.hlen("unacked") == 0, timeout=10, what="the acks")
    assert redis_client.zcard("unacked_index") == 0
    assert redis_client.hlen(f"{PREFIX}holders") == 0
    # And the worker sent no ack transactions of its own: one MULTI/EXEC per delivery (kombu's
    # unacked record when it took the message), where a separate ack would be a second
    execs = int(redis_client.info("commandstats").get("cmdstat_exec", {}).get("calls", 0))
    assert len(ids) <= execs < len(ids) + 5
