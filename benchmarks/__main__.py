"""``python -m benchmarks``: run the benchmarks against a private Redis and print the figures.

    python -m benchmarks                    # everything (about 10 minutes)
    python -m benchmarks --smoke            # a few seconds each: checks that they run
    python -m benchmarks --only publish     # some of: publish, matching, memory, throughput, latency
    python -m benchmarks --markdown FILE    # also write the figures as Markdown
    python -m benchmarks --baseline REV     # also: publish and throughput against REV (+5 min)
    python -m benchmarks --only rabbitmq-publish,rabbitmq-throughput   # RabbitMQ only (3 min)
    python -m benchmarks --only sentinel-publish   # Sentinel: publish with and without WAIT
    python -m benchmarks --only signing-publish,signing-throughput   # signed events (2 min)
    python -m benchmarks --only contracts-publish   # publish with a declared schema (1 min)
    python -m benchmarks --only observability-publish   # tracing, metrics, trace records (1 min)
    python -m benchmarks --only publish-many,relay   # publish_many; the outbox relay on PostgreSQL
    python -m benchmarks --only fanout      # Redis's time and bytes per fan-out, old and new (1 min)
    python -m benchmarks --only fanout-floor   # a fan-out to 100: shipped against leaner designs
    python -m benchmarks --only apublish    # asyncio: apublish from 100 tasks, loop lag (1 min)
    python -m benchmarks --soak --events 20000 --window 20   # a soak run alone (benchmarks/soak.py)

``--baseline REV`` takes a git revision of this repository (``main``, a tag, a commit) or the path
of a checkout, and adds two benchmarks, ``baseline-publish`` and ``baseline-throughput`` (which
``--only`` can pick): the publish cost (to 1 and to 10 subscribers) and the worker throughput of
the current code and of REV's, in processes of their own, interleaved in the same run against
the same server, printed with the ratios "current ÷ baseline" per repeat and their targets
(publish time ≤ 1.05×, throughput ≥ 0.95×). A revision is copied to a temporary directory
(``git archive``), removed at the end. See benchmarks/baseline.py.

The ``rabbitmq-*`` benchmarks also start a private RabbitMQ node (``rabbitmq-server``), only when
one of them is chosen; the private Redis holds their registry. See benchmarks/rabbitmq.py.
``sentinel-publish`` starts a Sentinel topology of its own (benchmarks/sentinel.py).

``--soak`` runs the soak run instead of the benchmarks: events through three services, then a
wait for the inbox window, with PASS or FAIL per criterion (memory flat, Redis back to its
baseline, no key left behind, every event handled once) and exit status 1 if one fails. Its
sizes: ``--events`` (1,000,000), ``--window`` (60 s), ``--batch``, ``--max-queued``,
``--concurrency``, ``--warmup``, ``--sample``; ``--smoke`` makes it a run of seconds. See
benchmarks/soak.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import sys
import time
from collections.abc import Callable

import redis

from tests.harness import rabbitmq_server_binary

from . import (
    aio,
    baseline,
    batch,
    contracts,
    fanout,
    fanout_floor,
    inbox,
    matching,
    memory,
    observability,
    publish,
    rabbitmq,
    sentinel,
    signing,
    soak,
    workers,
)
from ._env import PrivateRabbitMQ, PrivateRedis, machine
from ._stats import Section

Benchmark = Callable[[str, redis.Redis, bool], list[Section]]

BENCHMARKS: dict[str, Benchmark] = {
    "publish": publish.run,
    "matching": matching.run,
    "memory": memory.run,
    "inbox-memory": inbox.run,
    "throughput": workers.throughput,
    "latency": workers.latency,
    "signing-publish": signing.publish,
    "signing-throughput": signing.throughput,
    "contracts-publish": contracts.publish,
    "observability-publish": observability.publish,
    "publish-many": batch.publish_many,
    "relay": batch.relay,
    "fanout": fanout.run,
    "fanout-floor": fanout_floor.run,
    "apublish": aio.run,
}
#: Run only with ``--baseline``, which they take as their first argument.
AGAINST_BASELINE: dict[str, Callable[[baseline.Checkout, str, redis.Redis, bool], list[Section]]] = {
    "baseline-publish": baseline.publish,
    "baseline-throughput": baseline.throughput,
}
#: On a private RabbitMQ node: ``(rabbitmq_url, redis_url, redis_client, smoke)``.
ON_RABBITMQ: dict[str, Callable[[str, str, redis.Redis, bool], list[Section]]] = {
    "rabbitmq-publish": rabbitmq.publish,
    "rabbitmq-throughput": rabbitmq.throughput,
}
#: On servers of their own (a Sentinel topology): ``(smoke)``.
STANDALONE: dict[str, Callable[[bool], list[Section]]] = {
    "sentinel-publish": sentinel.publish,
}
#: The order of a full run: each comparison right after the benchmark it repeats.
ORDER = [
    "publish", "baseline-publish", "fanout", "fanout-floor", "matching", "memory", "inbox-memory", "throughput",
    "baseline-throughput", "latency", "signing-publish", "signing-throughput", "contracts-publish",
    "observability-publish", "publish-many", "relay", "apublish", "rabbitmq-publish",
    "rabbitmq-throughput", "sentinel-publish",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that they run")
    parser.add_argument("--only", help="comma-separated names (default: all)")
    parser.add_argument("--markdown", help="write the figures as Markdown to this file")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also compare publish and throughput with this git revision or checkout path",
    )
    group = parser.add_argument_group("the soak run (benchmarks/soak.py)")
    group.add_argument("--soak", action="store_true", help="run it instead of the benchmarks")
    defaults = soak.Options()
    sizes: dict[str, tuple[type, str]] = {
        "events": (int, "events published"),
        "window": (float, "the services' inbox_ttl, in seconds"),
        "batch": (int, "events per publish_many call (when the bus has it)"),
        "max_queued": (int, "the publisher waits while the event queues hold more messages"),
        "concurrency": (int, "pool processes of each worker"),
        "warmup": (int, "events sent before the baseline is taken"),
        "sample": (float, "seconds between two readings"),
    }
    for name, (kind, text) in sizes.items():
        group.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            help=f"{text} (default {getattr(defaults, name):,})",
        )
    args = parser.parse_args(argv)
    chosen_sizes = {name: getattr(args, name) for name in sizes if getattr(args, name) is not None}
    if args.soak:
        if args.only or args.baseline or args.markdown:
            parser.error("--soak runs alone: drop --only, --baseline and --markdown")
        options = soak.Options.smoke() if args.smoke else soak.Options()
        return soak.run(dataclasses.replace(options, **chosen_sizes))
    if chosen_sizes:
        parser.error(f"--{next(iter(chosen_sizes)).replace('_', '-')} is an option of --soak")
    known = [name for name in ORDER if args.baseline or name not in AGAINST_BASELINE]
    chosen = known if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown:
        hint = " (those need --baseline REV)" if set(unknown) <= set(AGAINST_BASELINE) else ""
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}{hint}; choose from {', '.join(known)}")

    skipped = ""
    if any(name in ON_RABBITMQ for name in chosen) and rabbitmq_server_binary() is None:
        if args.only is not None:
            parser.error("the rabbitmq-* benchmarks need rabbitmq-server (apt-get install rabbitmq-server)")
        chosen = [name for name in chosen if name not in ON_RABBITMQ]
        skipped = "rabbitmq-* skipped: rabbitmq-server is not installed (apt-get install rabbitmq-server)."

    with contextlib.ExitStack() as stack:
        try:
            old = stack.enter_context(baseline.baseline(args.baseline)) if args.baseline else None
        except baseline.BaselineError as error:
            parser.error(str(error))
        server = PrivateRedis()
        stack.callback(server.stop)
        client = server.client()
        rabbit = None
        if any(name in ON_RABBITMQ for name in chosen):
            rabbit = PrivateRabbitMQ()
            stack.callback(rabbit.stop)
        info = machine(client, rabbit)
        if old is not None:
            info["current"] = baseline.current().described
            info["baseline"] = old.described
        header = ["## Machine", ""] + [f"- {key}: {value}" for key, value in info.items()]
        print("\n".join(header), flush=True)
        if skipped:
            print(f"\n({skipped})", flush=True)
        sections: list[Section] = []
        for name in chosen:
            if name in BENCHMARKS:
                run = BENCHMARKS[name]
            elif name in ON_RABBITMQ:
                assert rabbit is not None  # started above for any of them
                run = functools.partial(ON_RABBITMQ[name], rabbit.url)
            elif name in STANDALONE:
                run = functools.partial(_standalone, STANDALONE[name])
            else:
                assert old is not None  # the parser let it through only with --baseline
                run = functools.partial(AGAINST_BASELINE[name], old)
            started = time.monotonic()
            for section in run(server.url, client, args.smoke):
                sections.append(section)
                print("\n" + section.markdown(), flush=True)
            print(f"({name}: {time.monotonic() - started:.0f} s)", flush=True)

    missed = [f"{t.name} ({s.title})" for s in sections for t in s.targets if not t.met]
    summary = "All targets met." if not missed else "Targets missed: " + "; ".join(missed) + "."
    print("\n" + summary)
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write("\n".join(header) + "\n\n")
            out.write("\n".join(section.markdown() for section in sections))
            out.write("\n" + summary + "\n")
    # Figures are reported, never asserted: a missed target does not fail the run.
    return 0


def _standalone(
    run: Callable[[bool], list[Section]], url: str, client: redis.Redis, smoke: bool
) -> list[Section]:
    return run(smoke)


if __name__ == "__main__":
    sys.exit(main())
