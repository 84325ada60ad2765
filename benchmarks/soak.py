"""``python -m benchmarks --soak``: a long run through three services, to see that nothing grows.

    python -m benchmarks --soak                          # 1,000,000 events, 60 s inbox window
    python -m benchmarks --soak --events 20000 --window 20
    python -m benchmarks --soak --smoke                  # 600 events, 3 s window: seconds

Not part of a plain ``python -m benchmarks`` run, nor of CI (its smoke size is: it checks that
the run works, not that nothing leaks). It exits with status 1 if any criterion fails.

**The fleet.** A private ``redis-server`` (the broker, registry, inboxes and ledgers), a second
one that only counts handler runs (the *tally*, so the counting weighs nothing on the first),
and three services, each one real ``celery -A benchmarks.soak_service worker`` process (``-c
1`` prefork by default, ``-l warning``) with the inbox window ``inbox_ttl`` set to ``--window``
and every other setting at its default. This process is the publisher (service ``shop``)::

    shop ── order.placed ──▶ orders.reserve_stock
                         └─▶ billing.charge ── invoice.issued ──▶ mail.send_invoice

so ``--events N`` events published here become 2N published events and 3N deliveries.

**The run.** Events are published in batches of ``--batch`` with ``bus.publish_many`` when the
bus has it (one ``(name, data)`` pair an event), else one ``bus.publish`` each; after each batch
the publisher waits while the three event queues hold more than ``--max-queued`` messages, so
it runs as fast as the workers keep up and the queues stay bounded.

1. Warm-up: the first ``--warmup`` events go through, then the run waits for their inbox
   window to pass. What they left (the registry, the catalog's record of each published name,
   scripts loaded, alive keys) is the *baseline*: Redis ``used_memory`` and the set of keys.
2. The other events are published; each handler counts its run of event ``n``.
3. Drain: until every handler ran every event (or nothing moved for 60 s: the ledger sweep
   sends a lost delivery again after ``redelivery_timeout`` + ``sweep_interval``, 20 s).
4. The window: after at least ``--window`` seconds, and at most ``2 × window + 30 s``, the run
   stops as soon as Redis is back to its baseline (no extra key, memory within the slack).

Every ``--sample`` seconds (5) it reads the publisher's RSS, each worker's (its main process
and its pool children, apart), Redis ``used_memory`` and ``DBSIZE``, the event queues' lengths
and the deliveries handled; a row of the table is printed every 30 s and at each milestone.

**Criteria**, each printed PASS or FAIL at the end:

- *publisher memory flat* and *{service} worker memory flat* (main and pool processes summed):
  RSS at 100 % of the run (all deliveries handled) at most ``max(5 MB, 5 %)`` above RSS at 10 %
  of the events published (after the warm-up of allocator and caches);
- *Redis memory back to baseline*: ``used_memory`` after the window at most 1 MiB above the
  baseline (the inbox records of about 4,000 deliveries: a growth per delivery shows well
  above that);
- *no key left behind*: after the window, no key that was not in the baseline; extra keys are
  listed by pattern (ids replaced by ``*``), with counts and how many have a time to live;
- *{handler} exactly once*: every one of the N events handled once by each of the three
  handlers: 0 lost (never ran), 0 duplicated (ran twice or more).

The summary also gives the throughput (events and deliveries a second, warm-up excluded) and an
estimate of a full 1,000,000-event run's duration from it.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import redis
from celery import Celery

from celery_events import EventBus
from celery_events.backends.redis.liveness import alive_prefix

from ._env import PrivateRedis, WorkerProcess
from ._keys import SOAK_COUNT_KEY, SOAK_HANDLERS, SOAK_READY_KEY, SOAK_RUNS_KEY, SOAK_SERVICES

QUEUES = tuple(f"events.{service}" for service in SOAK_SERVICES)
#: Deliveries each published ``order.placed`` becomes, by name and by handler.
EXPECTED = {"order.placed": 2, "invoice.issued": 1}
MB = 2**20
FLAT_MB, FLAT_SHARE = 5.0, 0.05
REDIS_SLACK = 1 * MB
#: No handled delivery for this long, queues empty: what has not run by now is lost.
STALL_SECONDS = 60.0
PRINT_EVERY = 30.0
FULL_RUN = 1_000_000


@dataclass
class Options:
    """The soak run's sizes; ``python -m benchmarks --soak --help`` lists them."""

    events: int = FULL_RUN
    window: float = 60.0
    batch: int = 100
    max_queued: int = 1_000
    concurrency: int = 1
    warmup: int = 200
    sample: float = 5.0

    @classmethod
    def smoke(cls) -> Options:
        return cls(events=600, window=3.0, batch=50, max_queued=300, warmup=30, sample=1.0)


@dataclass
class Sample:
    """One reading of the fleet."""

    elapsed: float
    phase: str
    published: int
    handled: int
    publisher_rss: int
    #: service → (RSS of the worker's main process, RSS of its pool children summed)
    workers: dict[str, tuple[int, int]]
    used_memory: int
    keys: int
    queued: int


@dataclass
class Verdict:
    name: str
    passed: bool
    detail: str


@dataclass
class Run:
    """Everything the run measured, for the summary."""

    options: Options
    samples: list[Sample] = field(default_factory=list)
    milestones: dict[str, Sample] = field(default_factory=dict)
    memory: dict[str, int] = field(default_factory=dict)  # Redis used_memory at each stage
    keys_before: set[bytes] = field(default_factory=set)
    keys_baseline: set[bytes] = field(default_factory=set)
    publish_seconds: float = 0.0
    drain_seconds: float = 0.0
    window_seconds: float = 0.0


def key_pattern(key: bytes) -> str:
    """A key's pattern: every part that looks like an id, a number or a token becomes ``*``."""
    text = key.decode(errors="replace")
    return re.sub(r"(?<![A-Za-z])([0-9a-fA-F-]{8,}|\d+)(?![A-Za-z])", "*", text)


def key_patterns(client: redis.Redis, keys: set[bytes]) -> dict[str, tuple[int, int]]:
    """``{pattern: (count, how many have a time to live)}`` of ``keys``."""
    found: dict[str, list[int]] = {}
    keys_list = sorted(keys)
    for start in range(0, len(keys_list), 1000):
        chunk = keys_list[start : start + 1000]
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.pttl(key)
        for key, ttl in zip(chunk, pipe.execute(), strict=True):
            if ttl == -2:  # gone since the scan
                continue
            counts = found.setdefault(key_pattern(key), [0, 0])
            counts[0] += 1
            counts[1] += ttl >= 0
    return {pattern: (c[0], c[1]) for pattern, c in sorted(found.items())}


def tally_counts(bitfield: bytes, count: int) -> tuple[int, int, int]:
    """Of the first ``count`` 2-bit counters (most significant bits first, as Redis's BITFIELD
    lays them out): how many are 0, 1, and 2 or more."""
    data = bitfield.ljust((count + 3) // 4, b"\0")
    zeros = ones = more = 0
    table = _TABLE
    full = count // 4
    for byte in data[:full]:
        z, o, m = table[byte]
        zeros, ones, more = zeros + z, ones + o, more + m
    for n in range(full * 4, count):
        value = (data[n // 4] >> (6 - 2 * (n % 4))) & 3
        zeros, ones, more = zeros + (value == 0), ones + (value == 1), more + (value >= 2)
    return zeros, ones, more


def _byte_counts(byte: int) -> tuple[int, int, int]:
    values = [(byte >> shift) & 3 for shift in (6, 4, 2, 0)]
    return values.count(0), values.count(1), sum(v >= 2 for v in values)


_TABLE = [_byte_counts(byte) for byte in range(256)]


class Fleet:
    """The servers, the three workers and the publisher's bus, and how to read them."""

    def __init__(self, options: Options, stack: contextlib.ExitStack) -> None:
        self.options = options
        self.server = PrivateRedis()
        stack.callback(self.server.stop)
        self.tally_server = PrivateRedis()
        stack.callback(self.tally_server.stop)
        self.client = self.server.client()
        self.tally = self.tally_server.client()
        self.workers: dict[str, WorkerProcess] = {}
        for service in SOAK_SERVICES:
            worker = WorkerProcess(
                self.server.url,
                [
                    "-l",
                    "warning",
                    "-c",
                    str(options.concurrency),
                    "-n",
                    f"{service}@%h",
                    "--without-mingle",
                    "--without-gossip",
                ],
                {
                    "SOAK_SERVICE": service,
                    "SOAK_TALLY": self.tally_server.url,
                    "SOAK_WINDOW": repr(options.window),
                },
                module="benchmarks.soak_service",
            )
            self.workers[service] = worker
            stack.callback(worker.stop)
        self.app = Celery("shop", broker=self.server.url)
        self.bus = EventBus(self.app, service="shop")
        stack.callback(self.bus.close)
        self.me = psutil.Process()

    def wait_ready(self) -> None:
        ready = [SOAK_READY_KEY.format(service=service) for service in SOAK_SERVICES]
        self.wait(lambda: self.tally.exists(*ready) == len(ready), 120, "the workers to start")

        def subscribed() -> bool:
            self.bus.registry.refresh()
            return all(
                len(self.bus.registry.match(name)) == count for name, count in EXPECTED.items()
            )

        self.wait(subscribed, 30, "the publisher to see every subscription")

    def check(self) -> None:
        for worker in self.workers.values():
            worker.check()

    def wait(self, condition: Callable[[], Any], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            self.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.1)

    def queued(self) -> int:
        pipe = self.client.pipeline(transaction=False)
        for queue in QUEUES:
            pipe.llen(queue)
        return sum(pipe.execute())

    def handled(self) -> int:
        counts = self.tally.mget([SOAK_COUNT_KEY.format(handler=h) for h in SOAK_HANDLERS])
        return sum(int(c or 0) for c in counts)

    def handled_by_each(self) -> dict[str, int]:
        counts = self.tally.mget([SOAK_COUNT_KEY.format(handler=h) for h in SOAK_HANDLERS])
        return {h: int(c or 0) for h, c in zip(SOAK_HANDLERS, counts, strict=True)}

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def keys(self) -> set[bytes]:
        return set(self.client.scan_iter(count=1000))

    def worker_rss(self, service: str) -> tuple[int, int]:
        try:
            main = psutil.Process(self.workers[service].process.pid)
            pool = 0
            for child in main.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    pool += child.memory_info().rss
            return main.memory_info().rss, pool
        except psutil.NoSuchProcess:
            return 0, 0

    def exactly_once(self, count: int) -> dict[str, tuple[int, int, int]]:
        """Per handler: (lost, duplicated, extra runs) over events 0..count-1."""
        result = {}
        for handler in SOAK_HANDLERS:
            raw = self.tally.get(SOAK_RUNS_KEY.format(handler=handler))
            bits = raw if isinstance(raw, bytes) else b""  # no key: nothing ran
            lost, once, more = tally_counts(bits, count)
            runs = int(self.tally.get(SOAK_COUNT_KEY.format(handler=handler)) or 0)
            result[handler] = (lost, more, runs - (count - lost))
        return result


class Soak:
    def __init__(self, options: Options, fleet: Fleet) -> None:
        self.options = options
        self.fleet = fleet
        self.run = Run(options)
        self.started = time.monotonic()
        self.published = 0
        self.next_sample = 0.0
        self.last_print = -PRINT_EVERY
        publish_many = getattr(fleet.bus, "publish_many", None)
        self.publish_many: Callable[[list[tuple[str, dict[str, Any]]]], list[Any]] | None = (
            publish_many
        )

    # -- sampling --------------------------------------------------------------------------

    def sample(self, phase: str, *, force: bool = False, milestone: str | None = None) -> None:
        now = time.monotonic() - self.started
        if not force and now < self.next_sample:
            return
        self.next_sample = now + self.options.sample
        fleet = self.fleet
        fleet.check()
        row = Sample(
            elapsed=now,
            phase=phase,
            published=self.published,
            handled=fleet.handled(),
            publisher_rss=fleet.me.memory_info().rss,
            workers={service: fleet.worker_rss(service) for service in SOAK_SERVICES},
            used_memory=fleet.used_memory(),
            keys=int(fleet.client.dbsize()),
            queued=fleet.queued(),
        )
        self.run.samples.append(row)
        if milestone:
            self.run.milestones[milestone] = row
        if milestone or now - self.last_print >= PRINT_EVERY or self.options.sample >= PRINT_EVERY:
            self.last_print = now
            print(self._row(row, milestone), flush=True)

    @staticmethod
    def header() -> str:
        workers = " | ".join(f"{s} main+pool MB" for s in SOAK_SERVICES)
        return (
            f"| s | phase | published | handled | publisher MB | {workers} | Redis MB | keys |"
            " queued |\n" + "| --- " * (8 + len(SOAK_SERVICES)) + "|"
        )

    @staticmethod
    def _row(row: Sample, milestone: str | None) -> str:
        workers = " | ".join(
            f"{main / MB:.1f}+{pool / MB:.1f}" for main, pool in row.workers.values()
        )
        phase = f"{row.phase} ({milestone})" if milestone else row.phase
        return (
            f"| {row.elapsed:.0f} | {phase} | {row.published:,} | {row.handled:,} |"
            f" {row.publisher_rss / MB:.1f} | {workers} | {row.used_memory / MB:.2f} |"
            f" {row.keys:,} | {row.queued:,} |"
        )

    # -- phases ----------------------------------------------------------------------------

    def publish(self, until: int, phase: str, milestones: dict[int, str]) -> None:
        """Publish events ``self.published .. until-1``, throttled on the queues' length."""
        options, fleet = self.options, self.fleet
        while self.published < until:
            while fleet.queued() > options.max_queued:
                self.sample(phase)
                time.sleep(0.02)
            count = min(options.batch, until - self.published)
            items = [("order.placed", _order(self.published + i)) for i in range(count)]
            if self.publish_many is not None:
                results = self.publish_many(items)
            else:
                results = [fleet.bus.publish(name, data) for name, data in items]
            for result in results:
                if len(result.deliveries) != EXPECTED["order.placed"]:
                    raise RuntimeError(
                        f"order.placed went to {len(result.deliveries)} subscribers, expected"
                        f" {EXPECTED['order.placed']}: {result.deliveries}"
                    )
            before = self.published
            self.published += count
            for mark, label in milestones.items():
                if before < mark <= self.published:
                    self.sample(phase, force=True, milestone=label)
            self.sample(phase)

    def drain(self, phase: str, events: int) -> None:
        """Wait until each handler ran ``events`` times, or nothing moved for STALL_SECONDS."""
        fleet = self.fleet
        last, moved = -1, time.monotonic()
        while True:
            counts = fleet.handled_by_each()
            if all(c >= events for c in counts.values()) and fleet.queued() == 0:
                return
            total = sum(counts.values())
            if total != last:
                last, moved = total, time.monotonic()
            elif time.monotonic() - moved > STALL_SECONDS:
                print(f"(nothing handled for {STALL_SECONDS:g} s: {counts}; going on)", flush=True)
                return
            self.sample(phase)
            time.sleep(0.1)

    def wait_window(self, phase: str, settled: Callable[[], bool]) -> float:
        """Wait at least the window, then until ``settled()`` or ``2 × window + 30 s``."""
        window = self.options.window
        began = time.monotonic()
        deadline = began + 2 * window + 30
        while True:
            now = time.monotonic()
            if now - began >= window and settled():
                return now - began
            if now > deadline:
                return now - began
            self.sample(phase)
            time.sleep(min(1.0, self.options.sample))

    def execute(self) -> list[Verdict]:
        options, fleet, run = self.options, self.fleet, self.run
        client = fleet.client
        warmup = min(options.warmup, options.events)
        print(
            f"\n### Soak run: {options.events:,} events, inbox window {options.window:g} s\n\n"
            f"publish: {'publish_many, batches of ' + str(options.batch) if self.publish_many else 'publish, one at a time'};"
            f" at most {options.max_queued:,} messages queued; workers -c {options.concurrency};"
            f" warm-up {warmup:,} events\n",
            flush=True,
        )
        print(self.header(), flush=True)
        run.keys_before = fleet.keys()
        run.memory["before the warm-up"] = fleet.used_memory()
        self.sample("warm-up", force=True)
        self.publish(warmup, "warm-up", {})
        self.drain("warm-up", warmup)

        # Held while the fleet lives, renewed before they expire: an alive key per worker
        # process that ran a delivery (liveness.py), a sweeper lock per service (worker.py,
        # renewed every sweep_interval). They belong to the baseline.
        prefix = fleet.bus.settings.key_prefix
        held = (alive_prefix(prefix).encode(), f"{prefix}sweeper:".encode())
        swept_once = time.monotonic() + 2 * fleet.bus.settings.sweep_interval

        def volatile_extras_gone() -> bool:
            extra = [k for k in fleet.keys() - run.keys_before if not k.startswith(held)]
            return time.monotonic() > swept_once and all(client.pttl(k) < 0 for k in extra)

        self.wait_window("warm-up window", volatile_extras_gone)
        run.keys_baseline = fleet.keys()
        run.memory["baseline (warm-up done, its window passed)"] = fleet.used_memory()
        self.sample("baseline", force=True, milestone="baseline")

        rest = options.events - warmup
        milestones = {
            warmup + max(1, rest // 10): "10%",
            warmup + max(1, rest // 2): "50%",
        }
        began = time.monotonic()
        self.publish(options.events, "publish", milestones)
        run.publish_seconds = time.monotonic() - began
        run.memory["end of publishing"] = fleet.used_memory()
        self.drain("drain", options.events)
        run.drain_seconds = time.monotonic() - began
        run.memory["all delivered"] = fleet.used_memory()
        self.sample("drain", force=True, milestone="100%")

        baseline = run.memory["baseline (warm-up done, its window passed)"]
        baseline_count = len(run.keys_baseline)

        def back_to_baseline() -> bool:
            if int(client.dbsize()) > baseline_count + 1000:
                return False  # not worth a scan yet
            return not (fleet.keys() - run.keys_baseline) and (
                fleet.used_memory() <= baseline + REDIS_SLACK
            )

        run.window_seconds = self.wait_window("window", back_to_baseline)
        run.memory["after the window"] = fleet.used_memory()
        self.sample("window", force=True, milestone="after the window")
        return self.verdicts()

    # -- summary ---------------------------------------------------------------------------

    def verdicts(self) -> list[Verdict]:
        options, fleet, run = self.options, self.fleet, self.run
        verdicts: list[Verdict] = []
        marks = [run.milestones.get(m) for m in ("10%", "50%", "100%")]
        print("\n#### Memory at 10 %, 50 %, 100 % of the run\n")
        print("| process | 10 % | 50 % | 100 % | growth 10→100 % | flat if at most |")
        print("| --- | --- | --- | --- | --- | --- |")

        def flat(name: str, values: list[int]) -> None:
            first, last = values[0], values[-1]
            limit = max(FLAT_MB * MB, FLAT_SHARE * first)
            growth = last - first
            cells = " | ".join(f"{v / MB:.1f} MB" for v in values)
            print(f"| {name} | {cells} | {growth / MB:+.1f} MB | {limit / MB:.1f} MB |")
            verdicts.append(
                Verdict(
                    f"{name} memory flat",
                    growth <= limit,
                    f"{growth / MB:+.1f} MB (at most {limit / MB:.1f})",
                )
            )

        if all(marks):
            rows = [m for m in marks if m is not None]
            flat("publisher", [m.publisher_rss for m in rows])
            for service in SOAK_SERVICES:
                print(
                    f"| {service} main | "
                    + " | ".join(f"{m.workers[service][0] / MB:.1f} MB" for m in rows)
                    + " | | |"
                )
                print(
                    f"| {service} pool | "
                    + " | ".join(f"{m.workers[service][1] / MB:.1f} MB" for m in rows)
                    + " | | |"
                )
                flat(f"{service} worker", [sum(m.workers[service]) for m in rows])
        else:
            verdicts.append(Verdict("memory flat", False, "the run was too short for milestones"))

        print("\n#### Redis\n")
        print("| when | used_memory |")
        print("| --- | --- |")
        for when, value in run.memory.items():
            print(f"| {when} | {value / MB:.2f} MB |")
        peak = max(s.used_memory for s in run.samples)
        peak_keys = max(s.keys for s in run.samples)
        print(f"| peak (sampled) | {peak / MB:.2f} MB, {peak_keys:,} keys |")
        baseline = run.memory["baseline (warm-up done, its window passed)"]
        # What the inbox still remembers when all is delivered: the deliveries of the last
        # window (read from the samples), not all of them (the older ones expired).
        drained = run.milestones["100%"]
        remembered = drained.handled - max(
            (s.handled for s in run.samples if s.elapsed <= drained.elapsed - options.window),
            default=run.milestones["baseline"].handled,
        )
        if remembered > 0:
            per = (run.memory["all delivered"] - baseline) / remembered
            print(
                f"\nRedis above the baseline, all delivered, queues empty: {per:.0f} B for each of"
                f" the {remembered:,} deliveries handled in the last {options.window:g} s"
                " (the ones the inbox still remembers)"
            )
        after = run.memory["after the window"]
        verdicts.append(
            Verdict(
                "Redis memory back to baseline",
                after <= baseline + REDIS_SLACK,
                f"{(after - baseline) / 1024:+.1f} KiB after the window (at most +{REDIS_SLACK // 1024} KiB),"
                f" {run.window_seconds:.0f} s after the last delivery",
            )
        )

        extra = fleet.keys() - run.keys_baseline
        made_by_warmup = run.keys_baseline - run.keys_before
        if made_by_warmup:
            print(
                "\nKeys the first events made, kept in the baseline: "
                + ", ".join(
                    f"{p} ×{c}" for p, (c, _) in key_patterns(fleet.client, made_by_warmup).items()
                )
            )
        if extra:
            print("\nKeys left behind after the window (pattern, count, with a time to live):")
            for pattern, (count, volatile) in key_patterns(fleet.client, extra).items():
                print(f"- `{pattern}`: {count:,} ({volatile:,} with a TTL)")
        verdicts.append(
            Verdict(
                "no key left behind",
                not extra,
                f"{len(extra):,} keys beyond the baseline's {len(run.keys_baseline):,}",
            )
        )

        for handler, (lost, duplicated, extra_runs) in fleet.exactly_once(options.events).items():
            verdicts.append(
                Verdict(
                    f"{handler} exactly once",
                    lost == 0 and duplicated == 0,
                    f"{options.events:,} events: {lost:,} lost, {duplicated:,} duplicated"
                    f" ({extra_runs:,} extra runs)",
                )
            )

        published = options.events - min(options.warmup, options.events)
        if run.drain_seconds > 0 and published > 0:
            rate = published / run.drain_seconds
            estimate = FULL_RUN / rate + 2 * options.window + 60
            print(
                f"\nThroughput (warm-up excluded): {published / max(run.publish_seconds, 1e-9):,.0f}"
                f" events/s published, {rate:,.0f} events/s and {3 * rate:,.0f} deliveries/s"
                f" handled end to end ({published:,} events in {run.drain_seconds:.0f} s);"
                f" a {FULL_RUN:,}-event run would take about {estimate / 60:.0f} min"
                f" (with the warm-up and the window, {options.window:g} s each)."
            )
        return verdicts


def _order(n: int) -> dict[str, Any]:
    """The data of order ``n``: a few fields and lines, about 300 bytes of JSON."""
    return {
        "n": n,
        "order_id": f"ord-{n:09d}",
        "customer_id": n % 9973,
        "email": f"customer{n % 9973}@example.com",
        "lines": [
            {"sku": f"sku-{(n + i) % 500:04d}", "quantity": 1 + (n + i) % 3, "price": 1999}
            for i in range(3)
        ],
        "total": 3 * 1999 * 2,
        "currency": "EUR",
    }


@contextlib.contextmanager
def _fleet(options: Options) -> Iterator[Fleet]:
    with contextlib.ExitStack() as stack:
        fleet = Fleet(options, stack)
        fleet.wait_ready()
        yield fleet


def run(options: Options) -> int:
    """Run the soak and print its table and verdicts; 0 if every criterion passed, else 1."""
    with _fleet(options) as fleet:
        soak = Soak(options, fleet)
        verdicts = soak.execute()
    print("\n#### Verdicts\n")
    for verdict in verdicts:
        print(f"- {'PASS' if verdict.passed else 'FAIL'} {verdict.name}: {verdict.detail}")
    failed = [v.name for v in verdicts if not v.passed]
    print("\nSoak: " + ("PASS" if not failed else "FAIL (" + "; ".join(failed) + ")"), flush=True)
    return 0 if not failed else 1
