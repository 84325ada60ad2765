"""Repeats, interleaving, and how figures are printed."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Series:
    """Measurements of one quantity over repeats."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def text(self, digits: int = 1) -> str:
        low, high = min(self.values), max(self.values)
        return f"{self.median:.{digits}f} [{low:.{digits}f}–{high:.{digits}f}] {self.unit}".rstrip()


@dataclass
class Target:
    """A figure compared to the goal the issue sets for it."""

    name: str
    series: Series
    goal: str
    met: bool


@dataclass
class Section:
    title: str
    setup: str
    figures: list[Series] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", self.setup, "", "| measure | median [min–max] |", "| --- | --- |"]
        lines += [f"| {s.name} | {s.text(_digits(s))} |" for s in self.figures]
        if self.targets:
            lines += ["", "| target | measured | goal | met |", "| --- | --- | --- | --- |"]
            lines += [
                f"| {t.name} | {t.series.text(_digits(t.series))} | {t.goal} |"
                f" {'yes' if t.met else 'NO'} |"
                for t in self.targets
            ]
        return "\n".join(lines) + "\n"


def _digits(series: Series) -> int:
    return 2 if series.unit in ("×", "µs", "ms") and series.median < 10 else 1


def interleaved(
    variants: dict[str, Callable[[], float]], repeats: int
) -> dict[str, list[float]]:
    """Run each variant once per repeat, rotating their order; return each one's results.

    A variant is a callable that measures once and returns its figure. Rotating the order keeps
    any variant from always running first (cold) or right after the same neighbour.
    """
    names = list(variants)
    results: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(variants[name]())
    return results


def chunked(
    variants: dict[str, tuple[Callable[[int], float], int]], repeats: int, chunks: int
) -> dict[str, list[float]]:
    """Time per operation of each variant, in µs, once per repeat, the variants taking turns.

    A variant is ``(run, ops)``: ``run(ops)`` performs ``ops`` operations (about 10 ms of work)
    and returns the seconds they took. Within each repeat every variant runs ``chunks`` chunks,
    the variants taking turns chunk by chunk in a rotating order, so that whatever else the
    machine does in a repeat weighs on all of them alike.
    """
    names = list(variants)
    results: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        spent = dict.fromkeys(names, 0.0)
        for chunk in range(chunks):
            shift = (repeat * chunks + chunk) % len(names)
            for name in names[shift:] + names[:shift]:
                run, ops = variants[name]
                spent[name] += run(ops)
        for name in names:
            results[name].append(spent[name] / (chunks * variants[name][1]) * 1e6)
    return results


def ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """Per-repeat ratios: each pair was measured in the same round of the same run."""
    return [a / b for a, b in zip(numerator, denominator, strict=True)]
