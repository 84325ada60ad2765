"""The database state store (``contrib/django/state.py``) on a real PostgreSQL, in-process:
the inbox's claims, leases, take-overs and counts, dead letters, settings and wiring."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from celery import Celery
from django.core.checks import run_checks
from django.test import override_settings
from django.utils import timezone

from celery_events import EventBus
from celery_events.backends.base import lease_value
from celery_events.contrib.django.models import DeadLetterRecord, DeliveryLease, WorkerProcess
from celery_events.contrib.django.state import DatabaseInbox, DatabaseState, check_database
from celery_events.deadletters import DeadLetterStore, Reason, new_letter
from celery_events.errors import ConfigurationError

from ..harness import wait_until
from .conftest import BOTH
from .settings import CELERY_EVENTS

pytestmark = pytest.mark.django_db(transaction=True, databases=BOTH)

HANDLER = "warehouse.pack"
#: The time of the events the inbox is asked about directly (the database inbox ignores it).
T = 1_700_000_000.0


def alive(token: str) -> bool:
    return WorkerProcess.objects.using("pg").filter(
        token=token, expires_at__gt=timezone.now() + timedelta(seconds=5)
    ).exists()


@pytest.fixture
def inbox() -> DatabaseInbox:
    found = DatabaseState("pg").inbox("warehouse")
    # Each test starts on emptied tables: this process's row is back within one renewal.
    token = found.process_token()
    wait_until(lambda: alive(token), timeout=10, what="this process's row")
    return found


def claim(inbox: DatabaseInbox, event_id: str, task_id: str, process: str | None = None,
          *, use_inbox: bool = True) -> tuple[str, object]:
    lease = lease_value(task_id, process or inbox.process_token())
    return lease, inbox.claim(
        HANDLER, event_id, task_id, event_time=T, lease=lease, lease_seconds=60,
        use_inbox=use_inbox,
    )


def test_a_claimed_delivery_is_busy_for_a_second_copy_then_done_once_it_succeeded(
    inbox: DatabaseInbox,
) -> None:
    event, task = uuid.uuid4().hex, uuid.uuid4().hex
    lease, first = claim(inbox, event, task)
    assert (first.status, first.starts, first.failures) == ("run", 1, 0)
    # A copy of the same delivery while this (live) process holds the lease waits
    _, second = claim(inbox, event, uuid.uuid4().hex)
    assert second.status == "busy" and second.holder == lease
    assert 0 < second.holder_ttl_ms <= 12_000  # until this process would count as dead
    assert inbox.succeed(HANDLER, event, task, event_time=T, lease=lease, use_inbox=True,
                         ttl_seconds=60)
    assert inbox.is_done(HANDLER, event, event_time=T)
    _, third = claim(inbox, event, uuid.uuid4().hex)
    assert third.status == "done"
    assert DeliveryLease.objects.using("pg").get(event_id=event).state == "done"


def test_failures_are_counted_across_runs_and_a_release_ends_the_run(inbox: DatabaseInbox) -> None:
    event, task = uuid.uuid4().hex, uuid.uuid4().hex
    lease, _ = claim(inbox, event, task)
    assert inbox.release(HANDLER, event, task, lease=lease, failed=True, next_due_in=1) == 1
    lease, again = claim(inbox, event, task)
    assert (again.status, again.starts, again.failures) == ("run", 1, 1)
    assert again.first_failed_at is not None
    assert inbox.release(HANDLER, event, task, lease=lease, failed=True) == 2
    # Given up: its bookkeeping goes
    lease, _ = claim(inbox, event, task)
    assert inbox.release(HANDLER, event, task, lease=lease, failed=True, forget=True) == 0
    _, fresh = claim(inbox, event, task)
    assert (fresh.starts, fresh.failures) == (1, 0)


def test_runs_that_never_finished_are_counted_as_starts(inbox: DatabaseInbox) -> None:
    # Each run's process died (its row expired) before it finished: the starts add up, which
    # is how the delivery task recognises a poison message
    event, task = uuid.uuid4().hex, uuid.uuid4().hex
    starts = []
    for _ in range(3):
        dead = uuid.uuid4().hex
        WorkerProcess.objects.using("pg").create(
            token=dead, expires_at=timezone.now() - timedelta(seconds=1)
        )
        _, found = claim(inbox, event, task, process=dead)
        starts.append((found.status, found.starts))
    assert starts == [("run", 1), ("run", 2), ("run", 3)]
    # Without the inbox too (no lease, the same counting)
    other = uuid.uuid4().hex
    assert [claim(inbox, event, other, use_inbox=False)[1].starts for _ in range(2)] == [1, 2]


def test_a_lease_of_a_dead_process_is_taken_over_and_its_late_success_is_dropped(
    inbox: DatabaseInbox,
) -> None:
    event, task = uuid.uuid4().hex, uuid.uuid4().hex
    dead = uuid.uuid4().hex
    WorkerProcess.objects.using("pg").create(token=dead, expires_at=timezone.now() + timedelta(seconds=30))
    old_lease, _ = claim(inbox, event, task, process=dead)
    _, blocked = claim(inbox, event, task)
    assert blocked.status == "busy"
    # When the holder stops renewing its row (killed), the next copy takes the lease over
    WorkerProcess.objects.using("pg").filter(token=dead).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    new_lease, taken = claim(inbox, event, task)
    assert (taken.status, taken.starts) == ("run", 2)
    # The presumed-dead run finishing late records nothing; the new holder's success counts
    assert not inbox.succeed(HANDLER, event, task, event_time=T, lease=old_lease,
                             use_inbox=True, ttl_seconds=60)
    assert not inbox.is_done(HANDLER, event, event_time=T)
    assert inbox.succeed(HANDLER, event, task, event_time=T, lease=new_lease,
                         use_inbox=True, ttl_seconds=60)
    assert inbox.is_done(HANDLER, event, event_time=T)


def test_this_process_row_is_renewed_by_its_thread(inbox: DatabaseInbox) -> None:
    token = inbox.process_token()
    first = WorkerProcess.objects.using("pg").get(token=token).expires_at
    wait_until(lambda: WorkerProcess.objects.using("pg").get(token=token).expires_at > first,
               timeout=10, what="a renewal")


@pytest.fixture
def letters() -> Iterator[DeadLetterStore]:
    yield DeadLetterStore(DatabaseState("pg").dead_letters("warehouse"), "warehouse", limit=3)


def letter(handler: str, reason: str, name: str = "crate.packed") -> object:
    return new_letter(
        service="warehouse", reason=reason, error=RuntimeError("no"), traceback=None,
        handler=handler, envelope={"id": uuid.uuid4().hex, "type": name}, attempts=1,
    )


def test_dead_letters_are_kept_listed_filtered_trimmed_and_purged(
    letters: DeadLetterStore,
) -> None:
    a = letters.add(letter("warehouse.pack", Reason.RETRIES_EXHAUSTED))
    b = letters.add(letter("warehouse.ship", Reason.REJECTED))
    c = letters.add(letter("warehouse.pack", Reason.REJECTED, "crate.lost"))
    assert [x.id for x in letters.list()] == [c.id, b.id, a.id]
    assert [x.id for x in letters.list(handler="warehouse.pack")] == [c.id, a.id]
    assert [x.id for x in letters.list(reason=Reason.REJECTED)] == [c.id, b.id]
    assert [x.id for x in letters.list(event_name="crate.lost")] == [c.id]
    assert letters.count() == 3 and letters.count(handler="warehouse.pack") == 2
    assert letters.get(b.id).error_message == "no"
    # Over the limit of 3, the oldest goes
    d = letters.add(letter("warehouse.ship", Reason.NOT_RETRIED))
    assert [x.id for x in letters.list()] == [d.id, c.id, b.id]
    # Another service's letters are its own
    other = DeadLetterStore(DatabaseState("pg").dead_letters("shop"), "shop")
    assert other.count() == 0
    assert DatabaseState("pg").dead_letter_services() == ["warehouse"]
    assert letters.purge(handler="warehouse.ship") == 2
    assert [x.id for x in letters.list()] == [c.id]


def test_a_record_the_store_cannot_read_is_listed_as_unreadable_and_purged(
    letters: DeadLetterStore,
) -> None:
    kept = letters.add(letter("warehouse.pack", Reason.REJECTED))
    DeadLetterRecord.objects.using("pg").filter(letter_id=kept.id).update(record="{not json")
    [found] = letters.list()
    assert found.reason == Reason.UNREADABLE_RECORD and found.raw == b"{not json"
    assert letters.get(kept.id).reason == Reason.UNREADABLE_RECORD
    assert letters.purge(kept.id) == 1 and letters.count() == 0


def test_a_bus_with_the_database_store_says_what_it_lacks(redis_url: str) -> None:
    bus = EventBus(Celery("djstate-caps", broker=redis_url), service="caps", state=DatabaseState("pg"))
    capabilities = bus.backend.capabilities
    assert not capabilities.transactional_effects
    assert capabilities.atomic_fanout and capabilities.dead_worker_recovery
    assert capabilities.lost_delivery_ledger  # kept in Redis beside the database inbox
    assert bus.backend.description.endswith("inboxes and dead letters in the Django database 'pg'")
    assert bus.backend.state.inbox("caps").new_effects() is None
    bus.close()
    strict = EventBus(
        Celery("djstate-require", broker=redis_url),
        service="req",
        state=DatabaseState("pg"),
        require=["transactional_effects"],
    )
    with pytest.raises(ConfigurationError, match="transactional_effects"):
        strict.register()  # makes the backend


def test_the_state_setting_is_checked() -> None:
    with override_settings(CELERY_EVENTS={**CELERY_EVENTS, "state": "postgres"}):
        [error] = [m for m in run_checks() if m.id == "celery_events.E002"]
    assert "CELERY_EVENTS['state'] must be 'backend' or 'database', not 'postgres'" in error.msg
    # SQLite cannot lock rows: refused for the store, with the fix
    with override_settings(CELERY_EVENTS={**CELERY_EVENTS, "state": "database", "database": "default"}):
        [error] = [m for m in run_checks() if m.id == "celery_events.E006"]
    assert "cannot lock rows" in error.msg
    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        check_database("default")
    with override_settings(CELERY_EVENTS={**CELERY_EVENTS, "state": "database", "database": "pg"}):
        assert not [m for m in run_checks() if m.id.startswith("celery_events.E")]


def test_the_redis_ledger_is_kept_beside_the_database_inbox(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # Given a Redis-brokered bus whose inbox is in the database, and a publisher on Redis
    app = Celery("djstate-ledger", broker=redis_url)
    bus = EventBus(app, service="ledgered", state=DatabaseState("pg"))
    bus.subscribe("crate.#", name="pack")(lambda event: None)
    bus.register()
    shop = EventBus(Celery("djstate-shop", broker=redis_url), service="shop")
    shop.registry.refresh()
    [delivery] = shop.publish("crate.packed", {"crate": 1}).deliveries
    ledger, due = "celery_events:ledger:ledgered", "celery_events:ledger:ledgered:due"
    # The publisher's fan-out recorded the delivery in the subscriber's ledger
    assert redis_client.hexists(ledger, delivery.task_id)
    inbox, event = bus.inbox, shop.new_event("crate.packed", {})
    at = event.time.timestamp()
    lease = lease_value(delivery.task_id, inbox.process_token())
    wait_until(lambda: alive(inbox.process_token()), timeout=10)
    # A run moves its due time past its lease, a retry past its wait
    before = time.time()
    inbox.claim("ledgered.pack", event.id, delivery.task_id, event_time=at, lease=lease,
                lease_seconds=60, use_inbox=True)
    assert redis_client.zscore(due, delivery.task_id) >= before + 60
    inbox.release("ledgered.pack", event.id, delivery.task_id, lease=lease, failed=True,
                  next_due_in=500)
    assert redis_client.zscore(due, delivery.task_id) >= before + 500
    # Handled: its entry goes, with the inbox record in the database
    inbox.claim("ledgered.pack", event.id, delivery.task_id, event_time=at, lease=lease,
                lease_seconds=60, use_inbox=True)
    assert inbox.succeed("ledgered.pack", event.id, delivery.task_id, event_time=at,
                         lease=lease, use_inbox=True, ttl_seconds=60)
    assert not redis_client.hexists(ledger, delivery.task_id)
    assert redis_client.zscore(due, delivery.task_id) is None
    assert DeliveryLease.objects.using("pg").get(event_id=event.id).state == "done"
    # A copy found already handled clears its own entry too
    [copy] = shop.publish_event(event).deliveries
    lease = lease_value(copy.task_id, inbox.process_token())
    found = inbox.claim("ledgered.pack", event.id, copy.task_id, event_time=at, lease=lease,
                        lease_seconds=60, use_inbox=True)
    assert found.status == "done" and not redis_client.hexists(ledger, copy.task_id)
    shop.close()
    bus.close()
