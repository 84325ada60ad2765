"""Registry matching with 10,000 subscriptions, wildcards included (target 5).

The subscriptions are 1,000 domains × 10 patterns each: exact names, ``domain.*``,
``domain.#``, ``*.verb`` and deeper ones, as services subscribe in practice. Two costs are
measured per publish: a name seen before (the matcher memoises names, as a service publishes
few distinct names many times) and a name never seen (a full walk of the pattern tree), each
as the mean over many distinct names, repeated.
"""

from __future__ import annotations

import random
import time

import redis

from celery_events.names import Matcher

from ._stats import Section, Series, Target

DOMAINS = 1000
VERBS = ["created", "updated", "deleted", "shipped", "paid", "failed", "viewed", "merged"]


def patterns(broad: bool = False) -> list[str]:
    """10 patterns per domain; ``broad``: every domain also listens to a verb everywhere."""
    found: list[str] = []
    for d in range(DOMAINS):
        domain = f"domain{d}"
        verb = VERBS[d % len(VERBS)]
        if broad:
            broad_pattern = f"*.{verb}" if d % 2 else f"#.{verb}"
        elif d % 50 == 0:
            broad_pattern = f"*.{verb}"  # a few services listen to a verb in every domain
        elif d % 50 == 1:
            broad_pattern = f"#.{verb}"
        else:
            broad_pattern = f"{domain}.{verb}.retried"
        found += [
            f"{domain}.created",
            f"{domain}.updated",
            f"{domain}.item.added",
            f"{domain}.*",
            f"{domain}.#",
            f"{domain}.*.added",
            f"{domain}.line.*.changed",
            f"{domain}.audit.#",
            f"{domain}.{VERBS[(d + 3) % len(VERBS)]}",
            broad_pattern,
        ]
    return found


def names(rng: random.Random, count: int) -> list[str]:
    shapes = [
        "domain{d}.{v}",
        "domain{d}.item.added",
        "domain{d}.line.{n}.changed",
        "domain{d}.audit.{v}.{n}",
        "other{n}.{v}",
    ]
    return [
        rng.choice(shapes).format(d=rng.randrange(DOMAINS), v=rng.choice(VERBS), n=rng.randrange(10**6))
        for _ in range(count)
    ]


def measure(entries: list[tuple[str, int]], rng: random.Random, smoke: bool) -> list[Series]:
    repeats = 2 if smoke else 15
    count = 500 if smoke else 20_000
    cold, warm, hits = [], [], []
    for _ in range(repeats):
        fresh = names(rng, count)
        # A new matcher per repeat, so every name is unseen (its memo is per matcher).
        matcher = Matcher(entries, memo_size=count)
        started = time.perf_counter()
        for name in fresh:
            matcher.match(name)
        cold.append((time.perf_counter() - started) / count * 1e6)
        started = time.perf_counter()
        for name in fresh:
            matcher.match(name)
        warm.append((time.perf_counter() - started) / count * 1e6)
        hits.append(sum(len(matcher.match(name)) for name in fresh) / count)
    return [
        Series("match, name never seen", "µs", cold),
        Series("match, name seen before", "µs", warm),
        Series("subscriptions matched per name", "", hits),
    ]


def run(url: str, client: redis.Redis, smoke: bool) -> list[Section]:
    rng = random.Random(7)
    sections = []
    for broad in (False, True):
        entries = [(pattern, i) for i, pattern in enumerate(patterns(broad))]
        assert len(entries) == 10_000
        started = time.perf_counter()
        Matcher(entries)
        build_ms = (time.perf_counter() - started) * 1e3
        figures = measure(entries, rng, smoke)
        kind = (
            "every domain also on `*.verb` or `#.verb`"
            if broad
            else "4 in 10 with `*` or `#`"
        )
        section = Section(
            title="Registry matching, 10,000 subscriptions" + (", broad wildcards" if broad else ""),
            setup=(
                f"`celery_events.names.Matcher` over 10,000 patterns (1,000 domains × 10,"
                f" {kind}); mean time per publish over {len(figures[0].values)} repeats of"
                f" {'500' if smoke else '20,000'} distinct names; built in {build_ms:.0f} ms."
            ),
            figures=figures,
        )
        cold = figures[0]
        section.targets = [
            Target("5. match, name never seen", cold, "< 20 µs", cold.median < 20)
        ]
        sections.append(section)
    return sections
