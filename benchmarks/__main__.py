"""``python -m benchmarks``: run the benchmarks against a private Redis and print the figures.

    python -m benchmarks                    # everything (about 10 minutes)
    python -m benchmarks --smoke            # a few seconds each: checks that they run
    python -m benchmarks --only publish     # some of: publish, matching, memory, throughput, latency
    python -m benchmarks --markdown FILE    # also write the figures as Markdown
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import redis

from . import matching, memory, publish, workers
from ._env import PrivateRedis, machine
from ._stats import Section

BENCHMARKS: dict[str, Callable[[str, redis.Redis, bool], list[Section]]] = {
    "publish": publish.run,
    "matching": matching.run,
    "memory": memory.run,
    "throughput": workers.throughput,
    "latency": workers.latency,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that they run")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated names")
    parser.add_argument("--markdown", help="write the figures as Markdown to this file")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")

    server = PrivateRedis()
    try:
        client = server.client()
        info = machine(client)
        header = ["## Machine", ""] + [f"- {key}: {value}" for key, value in info.items()]
        print("\n".join(header), flush=True)
        sections: list[Section] = []
        for name in chosen:
            started = time.monotonic()
            for section in BENCHMARKS[name](server.url, client, args.smoke):
                sections.append(section)
                print("\n" + section.markdown(), flush=True)
            print(f"({name}: {time.monotonic() - started:.0f} s)", flush=True)
    finally:
        server.stop()

    missed = [t.name for s in sections for t in s.targets if not t.met]
    summary = "All targets met." if not missed else "Targets missed: " + "; ".join(missed) + "."
    print("\n" + summary)
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write("\n".join(header) + "\n\n")
            out.write("\n".join(section.markdown() for section in sections))
            out.write("\n" + summary + "\n")
    # Figures are reported, never asserted: a missed target does not fail the run.
    return 0


if __name__ == "__main__":
    sys.exit(main())
