"""Publish and subscribe scopes against hostile peers: real `celery worker` processes on a real
redis-server.

Every well-configured service here has the scopes of tests.services._scopes.SCOPES: only
``payments`` may publish ``payments.#`` (protected), ``ledger`` may subscribe to
``payments.refund.*`` and ``order.#``. Signing is off in these tests, so the source a
subscriber checks is the one the envelope claims (see the last test).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import redis
from celery import Celery

from celery_events import Event, EventBus, PublishNotAllowed, SubscriptionNotAllowed

from ...harness import ROOT, Worker, wait_until
from ...services._scopes import SCOPES
from ..conftest import effects
from ..test_worker_refuses import refused

SCOPED = "tests.services.scoped"
SERVICES_KEY = "celery_events:services"  # the services that wrote a registry record


def bus_of(redis_url: str, service: str, scoped: bool = True) -> EventBus:
    """A bus in this process, as another service's process would make it."""
    app = Celery(service, broker=redis_url, set_as_current=False)
    return EventBus(app, service=service, **(SCOPES if scoped else {}))


def queued(client: redis.Redis, queue: str) -> int:
    return int(client.llen(queue))


def dead_letters(redis_url: str, service: str) -> list[Any]:
    return bus_of(redis_url, service, scoped=False).dead_letters.list()


def test_a_publish_the_scopes_refuse_raises_and_queues_nothing(
    start_worker: Callable[..., Worker], redis_url: str, redis_client: redis.Redis
) -> None:
    # Given ledger's worker, registered to payments.refund.*
    start_worker(SCOPED)
    # When shop, not granted the protected payments.#, publishes a refund
    shop = bus_of(redis_url, "shop")
    with pytest.raises(PublishNotAllowed) as raised:
        shop.publish("payments.refund.created", {"amount": 100})
    # Then it is told what to change, and nothing was queued
    message = str(raised.value)
    assert "'shop'" in message and "'payments.refund.created'" in message
    assert "publish_scopes['shop']" in message
    assert queued(redis_client, "events.ledger") == 0
    # While payments' refund reaches ledger's handler
    sent = bus_of(redis_url, "payments").publish("payments.refund.created", {"amount": 5})
    wait_until(lambda: len(effects(redis_client)) == 1, timeout=30, what="ledger's effect")
    (effect,) = effects(redis_client)
    assert effect["event_id"] == sent.event.id and effect["handler"] == "ledger.handle"


def test_a_worker_subscribed_beyond_its_scopes_does_not_start(
    start_worker: Callable[..., Worker], redis_url: str, redis_client: redis.Redis
) -> None:
    # Given ledger's handler on payments.#, which matches payments.created: not in its scope
    worker = start_worker(SCOPED, env={"SCOPED_PATTERN": "payments.#"}, ready=False)
    # Then its worker exits non-zero, never ready, with one line naming the fix
    log = refused(worker)
    assert "The subscription of service 'ledger' to 'payments.#' is not allowed" in log
    assert "subscribe_scopes['ledger']" in log
    # and it recorded nothing in the registry
    assert redis_client.smembers(SERVICES_KEY) == set()  # no record was written
    # And bus.register() of the same bus raises, recording nothing
    bus = bus_of(redis_url, "ledger")

    @bus.subscribe("payments.#")
    def handle(event: Event) -> None: ...

    with pytest.raises(SubscriptionNotAllowed):
        bus.register()
    assert redis_client.smembers(SERVICES_KEY) == set()  # no record was written


def test_a_delivery_from_a_service_not_allowed_to_publish_it_is_dead_lettered(
    start_worker: Callable[..., Worker], redis_url: str, redis_client: redis.Redis
) -> None:
    # Given ledger's worker, with its scopes
    start_worker(SCOPED)
    # When a stranger with no scopes of its own publishes a refund to it
    stranger = bus_of(redis_url, "shop", scoped=False)
    sent = stranger.publish("payments.refund.created", {"amount": 1_000_000})
    assert [d.service for d in sent.deliveries] == ["ledger"]
    # Then ledger's worker dead-letters it not_allowed, and its handler never runs
    wait_until(
        lambda: len(dead_letters(redis_url, "ledger")) == 1, timeout=30, what="a dead letter"
    )
    (letter,) = dead_letters(redis_url, "ledger")
    assert letter.reason == "not_allowed" and letter.attempts == 1
    assert letter.envelope["id"] == sent.event.id and letter.envelope["source"] == "shop"
    assert "service 'shop' may not publish 'payments.refund.created'" in letter.error_message
    assert effects(redis_client) == []
    assert queued(redis_client, "events.ledger") == 0


def test_with_signing_off_a_claimed_source_is_believed(
    start_worker: Callable[..., Worker], redis_url: str, redis_client: redis.Redis
) -> None:
    # What scopes alone cannot stop (the README says so): an event that claims to come from
    # payments is checked as payments'. Signing (trusted_keys) is what verifies the source.
    start_worker(SCOPED)
    stranger = bus_of(redis_url, "shop", scoped=False)
    forged = Event.create("payments.refund.created", {"amount": 1}, source="payments")
    stranger.publish_event(forged)
    wait_until(lambda: len(effects(redis_client)) == 1, timeout=30, what="the forged effect")
    assert effects(redis_client)[0]["source"] == "payments"
    assert dead_letters(redis_url, "ledger") == []


def test_a_stranger_registered_to_a_protected_name_gets_no_delivery(
    start_worker: Callable[..., Worker], redis_url: str, redis_client: redis.Redis
) -> None:
    # Given ledger's worker and a stranger's, registered to payments.# with no scopes of its own
    start_worker(SCOPED)
    start_worker(SCOPED, env={"SCOPED_SERVICE": "evil", "SCOPED_PATTERN": "payments.#",
                              "SCOPED_POLICY": "0"})
    assert redis_client.smembers(SERVICES_KEY) == {b"ledger", b"evil"}
    # When payments publishes a refund
    sent = bus_of(redis_url, "payments").publish("payments.refund.created", {"amount": 5})
    # Then only ledger gets a delivery: nothing was queued for the stranger
    assert [d.service for d in sent.deliveries] == ["ledger"]
    assert queued(redis_client, "events.evil") == 0
    wait_until(lambda: len(effects(redis_client)) == 1, timeout=30, what="ledger's effect")
    assert [e["handler"] for e in effects(redis_client)] == ["ledger.handle"]
    # And `celery eventbus subscriptions`, run as payments, shows the stranger's as refused
    listed = subprocess.run(
        [sys.executable, "-m", "celery", "-A", SCOPED, "eventbus", "subscriptions", "--json"],
        cwd=ROOT,
        env=dict(os.environ, SCOPED_SERVICE="payments", SCOPED_PATTERN="user.*"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    refusals = {s["service"]: s["refused"] for s in json.loads(listed.stdout)}
    assert refusals["ledger"] is None
    assert "may not subscribe to 'payments.#'" in refusals["evil"]
    table = subprocess.run(
        [sys.executable, "-m", "celery", "-A", SCOPED, "eventbus", "subscriptions"],
        cwd=ROOT,
        env=dict(os.environ, SCOPED_SERVICE="payments", SCOPED_PATTERN="user.*"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert table.returncode == 0, table.stderr
    (evil_row,) = [line for line in table.stdout.splitlines() if "evil.handle" in line]
    assert evil_row.rstrip().endswith("refused")
    assert "refused: evil.handle (payments.#)" in table.stderr
