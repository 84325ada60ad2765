"""The transactional outbox on PostgreSQL: written with the data, relayed once, never lost."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections import Counter
from datetime import timedelta

import pytest
import redis
from django.db import connections, transaction
from django.test import override_settings
from django.utils import timezone

from celery_events import PartialPublishError, PublishError
from celery_events.contrib.django.models import InboxEntry, OutboxEvent
from celery_events.contrib.django.outbox import OutboxRelay, cleanup
from celery_events.registry import Subscription

from ..harness import ROOT, RedisServer, wait_until
from .conftest import BOTH
from .helpers import queued_counts, queued_envelopes
from .settings import CELERY_EVENTS
from .warehouse.models import Order

QUEUE = "events.warehouse"
OUTBOX_PG = {**CELERY_EVENTS, "outbox": True, "database": "pg"}

pytestmark = [
    pytest.mark.django_db(transaction=True, databases=BOTH),
    pytest.mark.integration,
]


@pytest.fixture(autouse=True)
def outbox_in_postgres():
    with override_settings(CELERY_EVENTS=OUTBOX_PG):
        yield


def outbox() -> list[OutboxEvent]:
    return list(OutboxEvent.objects.using("pg").order_by("id"))


def test_publish_writes_the_event_in_the_callers_transaction(
    bus, redis_client: redis.Redis
) -> None:
    # When an order is written and published in one transaction
    with transaction.atomic(using="pg"):
        order = Order.objects.create(reference="B-1")
        result = bus.publish("order.placed", {"order_id": order.pk, "note": "é"})
    # Then the event waits in the outbox, unsent, and nothing reached the broker
    assert result.deferred is True and result.deliveries == ()
    [row] = outbox()
    assert row.event_id == result.event.id and row.sent_at is None
    assert redis_client.llen(QUEUE) == 0
    # And a rolled back transaction leaves no row behind
    with pytest.raises(RuntimeError), transaction.atomic(using="pg"):
        bus.publish("order.placed", {"order_id": 99})
        raise RuntimeError("rollback")
    assert len(outbox()) == 1


def test_the_relay_sends_the_stored_event_unchanged_and_marks_it_sent(
    bus, redis_client: redis.Redis
) -> None:
    with transaction.atomic(using="pg"):
        first = bus.publish("order.placed", {"order_id": 1}, correlation_id="corr-1")
        second = bus.publish("order.cancelled", {"order_id": 1})

    assert OutboxRelay(bus).relay_once() == 2

    # The envelopes on the broker are the ones publish() returned: id, time and cause kept
    envelopes = queued_envelopes(redis_client, QUEUE)
    assert envelopes == [first.event.to_envelope()] * 2 + [second.event.to_envelope()]
    assert envelopes[0]["correlationid"] == "corr-1"
    assert all(row.sent_at is not None and row.attempts == 0 for row in outbox())
    assert OutboxRelay(bus).relay_once() == 0


def test_two_relays_at_once_never_send_one_row_twice(
    bus, redis_client: redis.Redis, manage_env: dict[str, str]
) -> None:
    # Given two relay processes polling the same outbox
    command = [
        sys.executable, "-m", "django", "celery_events_relay",
        "--interval", "0.02", "--batch-size", "20",
    ]
    relays = [
        subprocess.Popen(command, cwd=ROOT, env=manage_env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        for relay in relays:
            assert relay.stdout is not None
            assert relay.stdout.readline().startswith("Relaying the outbox")
        # When 2,000 events are committed at once
        with transaction.atomic(using="pg"):
            ids = [bus.publish("order.placed", {"order_id": i}).event.id for i in range(2000)]
        # Then every one is sent, and marked sent
        wait_until(
            lambda: not OutboxEvent.objects.using("pg").filter(sent_at__isnull=True).exists(),
            timeout=120, what="an empty outbox",
        )
    finally:
        for relay in relays:
            relay.send_signal(signal.SIGTERM)
        outputs = [relay.communicate(timeout=30)[0] for relay in relays]
    # And each event reached each of the two handlers exactly once
    assert queued_counts(redis_client, QUEUE) == Counter({i: 2 for i in ids})
    sent = [int(re.search(r"Sent (\d+) event", out).group(1)) for out in outputs]
    assert sum(sent) == 2000
    assert all(count > 0 for count in sent), f"one relay did all the work: {sent}"


def test_events_committed_while_the_broker_is_down_are_sent_when_it_is_back(
    bus, redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    # Given the broker is down
    redis_server.stop()
    # When orders are committed with their events
    with transaction.atomic(using="pg"):
        ids = [bus.publish("order.placed", {"order_id": i}).event.id for i in range(30)]
    # Then the relay cannot send them, says so, and keeps them
    relay = OutboxRelay(bus)
    with pytest.raises(PublishError):
        relay.relay_once()
    [head, *_] = outbox()
    assert head.sent_at is None and head.attempts == 1 and "did not take" in head.last_error
    # And once the broker is back, every event is sent exactly once
    redis_server.start()
    assert relay.drain() == 30
    assert queued_counts(redis_client, QUEUE) == Counter({i: 2 for i in ids})


def test_a_row_that_can_never_be_sent_is_marked_failed_and_skipped(
    bus, redis_client: redis.Redis
) -> None:
    # Given a stored event whose data is over max_event_size (written by an older setting)
    too_big = bus.new_event("order.placed", {"order_id": 1})
    huge = json.dumps({"order_id": 1, "blob": "x" * (bus.settings.max_event_size + 1)})
    OutboxEvent.from_event(too_big, huge).save(using="pg")
    with transaction.atomic(using="pg"):
        fine = bus.publish("order.placed", {"order_id": 2})
    # When the relay runs
    assert OutboxRelay(bus).relay_once() == 1
    # Then the good event is sent and the bad one is kept, failed, with its error
    assert queued_counts(redis_client, QUEUE) == {fine.event.id: 2}
    bad = OutboxEvent.objects.using("pg").get(event_id=too_big.id)
    assert bad.failed_at is not None and bad.sent_at is None and "max_event_size" in bad.last_error
    assert OutboxRelay(bus).relay_once() == 0


def test_the_relay_marks_sent_exactly_the_rows_whose_events_the_broker_took(
    bus, redis_client: redis.Redis
) -> None:
    # Given a second service subscribed to crate events, whose queue key holds a string
    bus.registry.register(
        "packer", [Subscription("crate.packed", "packer", "packer.pack", "events.packer")]
    )
    bus.registry.refresh()
    redis_client.set("events.packer", "not a queue")
    # and an order event stored before a crate event
    with transaction.atomic(using="pg"):
        order = bus.publish("order.placed", {"order_id": 1})
        bus.publish("crate.packed", {"crate": 1})
    relay = OutboxRelay(bus)

    # When the relay sends them in one batch, and the broker refuses the crate event
    with pytest.raises(PublishError) as raised:
        relay.relay_once()

    # Then with atomic batches neither row is sent and nothing is queued; without, the
    # order's row is marked sent, as its event was, and the crate's waits
    first, second = outbox()
    assert second.sent_at is None
    if bus.backend.capabilities.atomic_batches:
        assert not isinstance(raised.value, PartialPublishError)
        assert first.sent_at is None and queued_counts(redis_client, QUEUE) == {}
    else:
        assert isinstance(raised.value, PartialPublishError) and raised.value.sent == 1
        assert first.sent_at is not None and second.attempts == 1
        assert queued_counts(redis_client, QUEUE) == {order.event.id: 2}
    # And once the queue is mended, the rest is sent, none twice
    redis_client.delete("events.packer")
    assert relay.drain() == (2 if bus.backend.capabilities.atomic_batches else 1)
    assert queued_counts(redis_client, QUEUE) == {order.event.id: 2}
    assert redis_client.llen("events.packer") == 1


def test_the_relay_sends_a_batch_larger_than_one_publish_many(bus, redis_client: redis.Redis) -> None:
    # Given 250 events committed with their orders
    with transaction.atomic(using="pg"):
        ids = [bus.publish("order.placed", {"order_id": i}).event.id for i in range(250)]
    # When a relay of batches of 100 drains the outbox
    relay = OutboxRelay(bus, batch_size=100)
    # Then it sends them in three batches, each event once, every row marked sent
    assert [relay.relay_once() for _ in range(4)] == [100, 100, 50, 0]
    assert queued_counts(redis_client, QUEUE) == Counter({i: 2 for i in ids})
    assert all(row.sent_at is not None for row in outbox())


def test_cleanup_deletes_old_sent_rows_and_old_inbox_rows_only(bus) -> None:
    with transaction.atomic(using="pg"):
        for i in range(3):
            bus.publish("order.placed", {"order_id": i})
    OutboxRelay(bus).relay_once()
    with transaction.atomic(using="pg"):
        bus.publish("order.placed", {"order_id": 3})  # unsent: never deleted
    old = timezone.now() - timedelta(days=8)
    [a, b, *_] = outbox()
    OutboxEvent.objects.using("pg").filter(pk=a.pk).update(sent_at=old)
    InboxEntry.objects.using("pg").create(event_id="e1", handler="h", event_name="x", handled_at=old)
    InboxEntry.objects.using("pg").create(event_id="e2", handler="h", event_name="x")

    assert cleanup() == (1, 1)
    assert len(outbox()) == 3
    assert list(InboxEntry.objects.using("pg").values_list("event_id", flat=True)) == ["e2"]


def test_the_management_command_drains_the_outbox(
    bus, redis_client: redis.Redis, manage_env: dict[str, str]
) -> None:
    with transaction.atomic(using="pg"):
        result = bus.publish("order.placed", {"order_id": 5})
    connections.close_all()
    done = subprocess.run(
        [sys.executable, "-m", "django", "celery_events_relay", "--drain"],
        cwd=ROOT, env=manage_env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Sent 1 event(s)." in done.stdout
    assert queued_counts(redis_client, QUEUE) == {result.event.id: 2}
