"""Reading queued deliveries for `eventbus status`: what is ours, and surviving what is not."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

import pytest

from celery_events import Subscription
from celery_events.backends.redis.queues import _published_at, _unacked_queue
from celery_events.cli import _age, _oldest
from celery_events.status import ServiceStatus, read_status


def queued(envelope_time: str) -> bytes:
    """A delivery as kombu's Redis transport stores it in a queue list."""
    body = json.dumps([[{"id": "e1", "type": "user.registered", "time": envelope_time}], {}, {}])
    return json.dumps(
        {
            "body": base64.b64encode(body.encode()).decode(),
            "content-type": "application/json",
            "headers": {"task": "orders.welcome_order"},
            "properties": {"body_encoding": "base64"},
        }
    ).encode()


def test_the_event_time_of_a_queued_delivery_is_read() -> None:
    stamp = _published_at(queued("2026-11-27T05:49:25.5Z"))
    assert stamp == datetime(2026, 11, 27, 5, 49, 25, 500000, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff not json",
        b"[]",
        b'{"body": "not base64!"}',
        json.dumps({"body": "W10=", "properties": {"body_encoding": "base64"}}).encode(),
        queued("yesterday"),
    ],
)
def test_anything_else_has_no_time(raw: bytes) -> None:
    assert _published_at(raw) is None


def test_unacked_entries_name_their_queue() -> None:
    assert _unacked_queue(json.dumps([{"body": "..."}, "", "events.orders"]).encode()) == "events.orders"
    assert _unacked_queue(b"garbage") is None
    assert _unacked_queue(b"[1]") is None


class CannedQueues:
    """Canned broker readings, to test how they are grouped per service."""

    def waiting(self, queue: str, now: float | None = None) -> tuple[int, float | None]:
        return {"events.orders": (4, 30.0), "events.orders.slow": (1, 90.0)}.get(queue, (0, None))

    def in_flight(self) -> dict[str, int]:
        return {"events.orders.slow": 2, "events.other": 7}


def test_queues_are_summed_per_service() -> None:
    subscriptions = [
        Subscription("user.*", "orders", "orders.audit", "events.orders", registered_at=10.0),
        Subscription("user.#", "orders", "orders.slow", "events.orders.slow", registered_at=12.0),
        Subscription("order.#", "mailer", "mailer.mail", "events.mailer", registered_at=11.0),
    ]
    statuses = read_status(subscriptions, CannedQueues(), dead_letters={"orders": 3}.get)
    mailer, orders = statuses
    assert isinstance(orders, ServiceStatus)
    assert (orders.service, orders.waiting, orders.in_flight, orders.oldest_waiting) == (
        "orders", 5, 2, 90.0,
    )
    assert orders.dead_letters == 3 and orders.subscriptions == 2 and orders.registered_at == 12.0
    assert [q.name for q in orders.queues] == ["events.orders", "events.orders.slow"]
    assert (mailer.waiting, mailer.in_flight, mailer.oldest_waiting, mailer.dead_letters) == (
        0, 0, None, None,
    )
    assert orders.to_json()["oldest_waiting_seconds"] == 90.0


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "-"), (2.84, "2.8s"), (61, "1m 01s"), (3600 * 5 + 120, "5h 02m")],
)
def test_ages_read_well(seconds: float | None, shown: str) -> None:
    assert _age(seconds) == shown


def test_waiting_deliveries_of_unknown_age_read_as_unknown_not_as_none_waiting() -> None:
    # RabbitMQ's quorum queues do not tell the age of their head.
    assert _oldest(3, None) == "?"
    assert _oldest(0, None) == "-"
    assert _oldest(3, 5.0) == "5.0s"
