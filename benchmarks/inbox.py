"""Inbox memory: Redis bytes per remembered delivery (issue 16, target: at most 40 B).

100,000 deliveries (2,000 in a smoke run) go through the inbox's own calls on the private
Redis, as a worker makes them around each handler (``claim`` then ``succeed``; the worker's
other costs are not the inbox's), with uuid4 event ids and event times of a stream of 1,000
events per second (and, as a second figure, 10 per second: more groups, fewer markers each).
``INFO used_memory`` is read before and after; the difference divided by the count is the
memory a handled delivery holds for ``inbox_ttl``. The old layout (one key
``inbox:{handler}:{event id}`` = ``done`` with ``PX inbox_ttl`` per delivery, what the success
script left before) is measured in the same run, on the same server, with the same ids.
"""

from __future__ import annotations

import time
import uuid

import redis

from celery_events.backends.base import lease_value
from celery_events.backends.redis.inbox import Inbox

from ._stats import Section, Series, Target

PREFIX = "bench-inbox:"
HANDLER = "bench.handle"
TTL = 3600.0


def _used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def _clear(client: redis.Redis) -> None:
    keys = list(client.scan_iter(f"{PREFIX}*", count=10_000))
    for start in range(0, len(keys), 10_000):
        client.delete(*keys[start : start + 10_000])


def old_layout(client: redis.Redis, ids: list[str]) -> float:
    """Bytes per delivery of one ``done`` key each (written in pipelines: only memory counts)."""
    _clear(client)
    before = _used(client)
    with client.pipeline(transaction=False) as pipe:
        for n, event_id in enumerate(ids):
            pipe.set(f"{PREFIX}inbox:{HANDLER}:{event_id}", "done", px=int(TTL * 1000))
            if n % 1000 == 999:
                pipe.execute()
        pipe.execute()
    used = (_used(client) - before) / len(ids)
    _clear(client)
    return used


def markers(client: redis.Redis, ids: list[str], rate: float) -> float:
    """Bytes per delivery left by ``claim`` + ``succeed``, event times at ``rate`` per second."""
    _clear(client)
    inbox = Inbox(client, "bench", PREFIX)
    process = inbox.process_token()
    start = time.time() - len(ids) / rate
    # Loaded before the count begins: the scripts and the alive key are not per delivery.
    _deliver(inbox, process, str(uuid.uuid4()), start)
    before = _used(client)
    for n, event_id in enumerate(ids):
        _deliver(inbox, process, event_id, start + n / rate)
    used = (_used(client) - before) / len(ids)
    _clear(client)
    return used


def _deliver(inbox: Inbox, process: str, event_id: str, at: float) -> None:
    task_id = uuid.uuid4().hex
    lease = lease_value(task_id, process)
    claim = inbox.claim(
        HANDLER,
        event_id,
        task_id,
        event_time=at,
        lease=lease,
        lease_seconds=60,
        use_inbox=True,
    )
    if claim.status != "run":
        raise RuntimeError(f"a fresh delivery was not run: {claim}")
    inbox.succeed(
        HANDLER,
        event_id,
        task_id,
        event_time=at,
        lease=lease,
        use_inbox=True,
        ttl_seconds=TTL,
    )


def run(url: str, client: redis.Redis, smoke: bool) -> list[Section]:
    count = 2_000 if smoke else 100_000
    repeats = 1 if smoke else 2
    ids = [str(uuid.uuid4()) for _ in range(count)]
    old, fast, slow = [], [], []
    for _ in range(repeats):
        fast.append(markers(client, ids, 1000.0))
        slow.append(markers(client, ids, 10.0))
    # Once, and last: deleting its 100,000 keys leaves Redis's key tables large, and their
    # shrinking later would be counted against whatever came next.
    old.append(old_layout(client, ids))
    section = Section(
        title=f"Inbox memory per handled delivery, {count:,} deliveries",
        setup=(
            "INFO used_memory growth ÷ deliveries, after claim + succeed per delivery on the"
            " private Redis (stock settings), uuid4 event ids; the old layout (one `done` key"
            " per delivery) with the same ids, in the same run."
        ),
        figures=[
            Series("old layout: a key per delivery", "B", old),
            Series("done markers, 1,000 events/s", "B", fast),
            Series("done markers, 10 events/s", "B", slow),
        ],
    )
    new = section.figures[1]
    section.targets = [
        Target("16. inbox bytes per remembered delivery", new, "≤ 40 B", new.median <= 40)
    ]
    return [section]
