"""Batch publish: ``bus.publish_many`` against ``publish`` and raw ``send_task``, and the outbox
relay on it (issue 16).

``publish-many``: one Celery app publishes, in this process, 100 events to 10 subscribing
services (10 queues nobody consumes): as one ``publish_many`` of 100, as 100 ``publish`` calls,
and as the same 1,000 messages by raw ``app.send_task``. The variants take turns in chunks,
every ratio between figures of the same repeat; each figure is the time per event, its ten
deliveries included.

``relay``: the Django outbox relay (``OutboxRelay.drain``) on a private PostgreSQL (as
tests/django start it) and the private Redis: events per second relayed from rows already
committed, to the test project's two handlers, with batches of 100 (the default
``relay_batch_size``: one ``publish_many`` per batch) and of 1 (one event per transaction and
publish, as the relay sent before ``publish_many``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery

from celery_events import Event, EventBus, Subscription

from ._stats import Section, Series, Target, chunked, interleaved, ratios
from .publish import _clean

FANOUT = 10
BATCH = 100


def publish_many(url: str, client: redis.Redis, smoke: bool) -> list[Section]:
    app = Celery("bench-batch", broker=url)
    bus = EventBus(app, service="batcher")
    for i in range(FANOUT):
        bus.registry.register(
            f"b{i}", [Subscription("bench.many", f"b{i}", f"b{i}.handle", f"events.b{i}")]
        )
    data = {"user_id": 7, "email": "someone@example.com", "plan": "pro"}
    envelope = Event.create("bench.many", data, source="batcher").to_envelope()
    items = [("bench.many", data)] * BATCH
    last = f"events.b{FANOUT - 1}"

    def chunk(events: int, op: Callable[[], Any], per_op: int) -> Callable[[int], float]:
        def run(ops: int) -> float:
            started = time.perf_counter()
            for _ in range(ops // per_op):
                op()
            elapsed = time.perf_counter() - started
            queued = int(client.llen(last))
            if queued != ops:
                raise RuntimeError(f"expected {ops} messages on {last}, found {queued}")
            _clean(client)
            return elapsed

        return run

    def many() -> None:
        bus.publish_many(items)

    def one() -> None:
        bus.publish("bench.many", data)

    def raw() -> None:
        for i in range(FANOUT):
            app.send_task(f"b{i}.handle", args=[envelope], kwargs={}, queue=f"events.b{i}")

    # (run, events per chunk): about 10-30 ms of work each.
    plan = {
        f"publish_many of {BATCH}, per event": (chunk(BATCH, many, BATCH), BATCH),
        "publish, per event": (chunk(20, one, 1), 20),
        "raw send_task × 10 queues, per event": (chunk(3, raw, 1), 3),
    }
    for run, ops in plan.values():  # warm-up: connections, scripts, caches
        run(ops)
    repeats, chunks = (2, 2) if smoke else (10, 10)
    results = chunked(plan, repeats, chunks)
    bus.close()
    many_t, one_t, raw_t = (results[name] for name in plan)
    section = Section(
        title=f"Batch publish: {BATCH} events to {FANOUT} subscribers each",
        setup=(
            f"Time per event of one `publish_many` of {BATCH} events, of `publish`, and of the"
            f" same {FANOUT} messages per event by raw `send_task`; queues not consumed."
        ),
        figures=[Series(name, "µs", values) for name, values in results.items()],
    )
    faster = Series("publish ÷ publish_many, per event", "×", ratios(one_t, many_t))
    raw_ratio = Series("raw send_task ÷ publish_many, per event", "×", ratios(raw_t, many_t))
    section.figures.append(raw_ratio)
    section.targets = [Target(faster.name, faster, "≥ 10×", faster.median >= 10)]
    return [section]


def relay(url: str, client: redis.Redis, smoke: bool) -> list[Section]:
    from tests.django.postgres import PostgresServer, postgres_bin_dir

    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError("the relay benchmark needs PostgreSQL (apt-get install postgresql)")
    server = PostgresServer(bin_dir)
    server.start()
    try:
        return _relay(server.port, url, client, smoke)
    finally:
        from django.db import connections

        connections.close_all()
        server.stop()


def _relay(port: int, url: str, client: redis.Redis, smoke: bool) -> list[Section]:
    import psycopg

    dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("CREATE DATABASE celery_events")
    os.environ.update(
        CELERY_EVENTS_TEST_PG_PORT=str(port),
        CELERY_EVENTS_TEST_DATABASE="pg",
        CELERY_EVENTS_TEST_OUTBOX="1",
        CELERY_EVENTS_TEST_BROKER=url,
    )
    import django
    from django.conf import settings

    from tests.django import settings as project

    settings.configure(**{k: getattr(project, k) for k in dir(project) if k.isupper()})
    django.setup()
    from django.core.management import call_command
    from django.db import transaction

    from celery_events.contrib.django import get_bus
    from celery_events.contrib.django.models import OutboxEvent
    from celery_events.contrib.django.outbox import OutboxRelay

    call_command("migrate", database="pg", verbosity=0)
    bus = get_bus()
    bus.register()
    queue = "events.warehouse"
    rows = 2_000 if smoke else 20_000

    def fill(count: int) -> None:
        made = [bus.new_event("order.placed", {"order_id": i}) for i in range(count)]
        with transaction.atomic(using="pg"):
            OutboxEvent.objects.using("pg").bulk_create(
                [OutboxEvent.from_event(e, json.dumps(e.data)) for e in made],
                batch_size=1000,
            )

    def rate(batch_size: int, count: int) -> Callable[[], float]:
        def measure() -> float:
            fill(count)
            relay = OutboxRelay(bus, batch_size=batch_size)
            started = time.perf_counter()
            sent = relay.drain()
            elapsed = time.perf_counter() - started
            if sent != count or client.llen(queue) != 2 * count:
                raise RuntimeError(f"relayed {sent} of {count}, {client.llen(queue)} queued")
            client.delete(queue)
            client.delete(*(list(client.scan_iter(match="celery_events:ledger:*")) or ["-"]))
            OutboxEvent.objects.using("pg").all().delete()
            return count / elapsed

        return measure

    plan = {
        f"relay, batches of {BATCH} (publish_many)": rate(BATCH, rows),
        "relay, batches of 1 (one event per transaction)": rate(1, rows // 10),
    }
    results = interleaved(plan, 2 if smoke else 5)
    bus.close()
    batched, single = (results[name] for name in plan)
    section = Section(
        title="Outbox relay on PostgreSQL",
        setup=(
            f"Events per second relayed by one `OutboxRelay.drain()` from committed rows, to"
            f" two handlers on one queue ({rows} rows per run, a tenth with batches of 1)."
        ),
        figures=[Series(name, "events/s", values) for name, values in results.items()],
    )
    gain = Series("batches of 100 ÷ batches of 1", "×", ratios(batched, single))
    section.figures.append(gain)
    events = Series("relay, events/s", "events/s", batched)
    section.targets = [Target(events.name, events, "≥ 10,000/s", events.median >= 10_000)]
    return [section]
