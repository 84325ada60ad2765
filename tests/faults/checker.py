"""A Jepsen-style checker: compare what should have happened with what did.

Each effect is a (handler, event id) pair. Every expected effect must have happened exactly
once; every deliberate failure must be a dead letter; nothing else may have happened.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

Pair = tuple[str, str]


@dataclass(frozen=True)
class Verdict:
    expected: int
    ok: int
    #: expected effects that never happened
    lost: int
    #: effects that happened more than once (each extra run counts)
    duplicated: int
    #: effects nobody expected (a deliberate failure that took effect, an unknown event)
    unexpected: int
    expected_dead: int
    #: deliberate failures missing from the dead letters
    dead_missing: int
    #: dead letters for deliveries that should have succeeded
    dead_unexpected: int

    @property
    def valid(self) -> bool:
        return not (
            self.lost or self.duplicated or self.unexpected or self.dead_missing
            or self.dead_unexpected
        )

    def summary(self) -> str:
        return (
            f"expected {self.expected}, ok {self.ok}, lost {self.lost}, duplicated"
            f" {self.duplicated}, unexpected {self.unexpected}; dead letters expected"
            f" {self.expected_dead}, missing {self.dead_missing}, unexpected"
            f" {self.dead_unexpected}"
        )


def check(
    expected: Iterable[Pair],
    expected_dead: Iterable[Pair],
    effects: Iterable[Pair],
    dead: Iterable[Pair],
) -> Verdict:
    want = set(expected)
    want_dead = set(expected_dead)
    seen = Counter(effects)
    dead_seen = set(dead)
    return Verdict(
        expected=len(want),
        ok=sum(1 for pair in want if seen[pair] >= 1),
        lost=sum(1 for pair in want if seen[pair] == 0),
        duplicated=sum(count - 1 for pair, count in seen.items() if count > 1),
        unexpected=sum(count for pair, count in seen.items() if pair not in want),
        expected_dead=len(want_dead),
        dead_missing=len(want_dead - dead_seen),
        dead_unexpected=len(dead_seen - want_dead),
    )
