"""RabbitMQ: signed events pass, retries included, and a forged one is refused there too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import redis
from celery import Celery

from celery_events import Event, EventBus

from ...harness import Worker, wait_until
from .conftest import Rabbit, records


def test_a_forged_event_is_refused_and_a_signed_one_survives_its_retry(
    rabbit: Rabbit, start_rabbit_worker: Callable[..., Worker], redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    # Given a subscriber on RabbitMQ that trusts shop's key
    from celery_events.trust.keys import generate_ed25519

    private, public = generate_ed25519()
    (tmp_path / "shop.k1.key").write_bytes(private)
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "shop.k1.pub").write_bytes(public)
    start_rabbit_worker(RABBIT_SERVICE="alpha", RABBIT_TRUSTED=str(trusted))
    shop = EventBus(Celery("shop", broker=rabbit.url), service="shop",
                    registry_url=rabbit.state_url, signing_key=str(tmp_path / "shop.k1.key"))
    intruder = EventBus(Celery("intruder", broker=rabbit.url), service="intruder",
                        registry_url=rabbit.state_url)
    ops = EventBus(Celery("alpha-ops", broker=rabbit.url), service="alpha",
                   registry_url=rabbit.state_url, trusted_keys=str(trusted))
    try:
        # When shop publishes a signed event whose handler fails once, and an intruder
        # publishes one in shop's name
        genuine = shop.publish("shop.thing", {"fail": 1}).event
        forged = intruder.publish_event(Event.create("shop.thing", {}, source="shop")).event

        # Then the forged one is dead-lettered as invalid_signature and never ran
        letters = wait_until(
            lambda: ops.dead_letters.list(reason="invalid_signature"), timeout=30,
            what="the forged event refused",
        )
        assert [lt.event_id for lt in letters] == [forged.id]
        assert "not signed" in letters[0].error_message
        # And the signed one ran twice (its retry passed the check) and took effect
        wait_until(lambda: records(redis_client, "test:effects"), timeout=30,
                   what="the signed event handled")
        runs = records(redis_client, "test:runs")
        assert [(r["event_id"], r["retries"]) for r in runs] == [(genuine.id, 0), (genuine.id, 1)]
        assert [e["event_id"] for e in records(redis_client, "test:effects")] == [genuine.id]
    finally:
        for bus in (shop, intruder, ops):
            bus.close()
