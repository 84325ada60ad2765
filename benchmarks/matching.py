"""Registry matching with 10,000 subscriptions, wildcards included (targets 5 and 7).

The subscriptions are 1,000 domains × 10 patterns each: exact names, ``domain.*``,
``domain.#``, ``*.verb`` and deeper ones, as services subscribe in practice. Two costs are
measured per publish: a name seen before (the matcher memoises names, as a service publishes
few distinct names many times) and a name never seen (a full walk of the pattern tree), each
as the mean over many distinct names, repeated.

The adversarial case puts hostile patterns among them (``#.#.#.#.#.#.#.#.zz``, ``*.#.*.#…``,
``#`` between words the names use) and matches valid 40-word names never seen before: the
worst a publisher meets, which took minutes per name before matching became polynomial.
"""

from __future__ import annotations

import random
import time

import redis

from celery_events.names import Matcher, validate_name, validate_pattern

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


#: Words of the adversarial names and patterns (40 of them make a valid name of < 255 chars).
ADVERSARIAL_WORDS = [f"w{i}" for i in range(50)] + ["zz"]


def adversarial_patterns(rng: random.Random, count: int) -> list[str]:
    """Patterns built to make matching slow: many ``#``, and ``#`` next to words names use."""
    found: list[str] = []
    for n in range(count):
        kind = n % 4
        word = rng.choice(ADVERSARIAL_WORDS)
        if kind == 0:  # the bug report's: a run of '#' before a word
            pattern = ".".join(["#"] * rng.randint(2, 16) + [word])
        elif kind == 1:  # '*' and '#' mixed, half of them ending in a word
            pattern = ".".join(rng.choice(["*", "#"]) for _ in range(rng.randint(2, 24)))
            pattern += f".{word}" if n % 8 == 1 else ""
        elif kind == 2:  # '#' between words the names use
            pattern = ".".join(
                part for _ in range(rng.randint(2, 8)) for part in ("#", rng.choice(ADVERSARIAL_WORDS))
            )
        else:  # '*.#' runs between words
            pattern = ".".join(
                part
                for _ in range(rng.randint(2, 6))
                for part in ("*", "#", rng.choice(ADVERSARIAL_WORDS))
            )
        found.append(validate_pattern(pattern))
    return found


def long_names(rng: random.Random, count: int) -> list[str]:
    return [
        validate_name(".".join(rng.choice(ADVERSARIAL_WORDS) for _ in range(40)))
        for _ in range(count)
    ]


def measure_adversarial(
    entries: list[tuple[str, int]], rng: random.Random, smoke: bool
) -> list[Series]:
    repeats = 2 if smoke else 15
    count = 20 if smoke else 200
    cold, hits = [], []
    for _ in range(repeats):
        fresh = long_names(rng, count)
        # memo_size=1: the memo is emptied before each name is stored, so none is reused.
        matcher = Matcher(entries, memo_size=1)
        started = time.perf_counter()
        found = sum(len(matcher.match(name)) for name in fresh)
        cold.append((time.perf_counter() - started) / count * 1e3)
        hits.append(found / count)
    return [
        Series("match, 40-word name never seen", "ms", cold),
        Series("subscriptions matched per name", "", hits),
    ]


def adversarial(smoke: bool) -> list[Section]:
    rng = random.Random(11)
    sections = []
    for hostile in (1000, 10_000):
        ordinary = patterns()[: 10_000 - hostile]
        chosen = ordinary + adversarial_patterns(rng, hostile)
        entries = [(pattern, i) for i, pattern in enumerate(chosen)]
        assert len(entries) == 10_000
        figures = measure_adversarial(entries, rng, smoke)
        every = hostile == len(entries)
        section = Section(
            title="Registry matching, 10,000 subscriptions, adversarial patterns"
            + (", all of them" if every else ""),
            setup=(
                f"`Matcher` over {'10,000 adversarial patterns' if every else f'{len(ordinary):,} of the patterns above and {hostile:,} adversarial ones'}"
                " (runs of up to 16 `#` before a word as in `#.#.#.#.#.#.#.#.zz`, `*` and `#`"
                " mixed up to 24 deep, `#` and `*.#` between words the names use); valid 40-word"
                " names over 51 words, each never seen (memo bypassed); mean time per name over"
                f" {len(figures[0].values)} repeats of {20 if smoke else 200} names."
            ),
            figures=figures,
        )
        if not every:
            cold = figures[0]
            section.targets = [
                Target("7. match, adversarial patterns, 40-word name", cold, "< 1 ms", cold.median < 1)
            ]
        sections.append(section)
    return sections


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
    return sections + adversarial(smoke)
