"""The one rule that says whether a difference is real: a 95 % bootstrap interval over relations and
the trials within them, with a fixed seed.

Every verdict of every report compares two numbers that are means over (relation, trial) bundles. The
bundles are not independent draws: the trials of one relation share its samples' population, and the
relations are what a reader generalises over. So the resampling is two-stage: draw the relations with
replacement, then, within each drawn relation, its trials with replacement; the statistic of a resample
is the mean over the resampled bundles (the same weighting as the point estimate, which is the plain
mean over bundles). A difference is "detectable" only when its interval excludes 0; otherwise a verdict
says "no detectable difference".

A paired difference (:func:`paired_difference`) resamples the bundles that have both values, so that
what a relation brings to one side it brings to the other.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

#: (relation, trial): the unit a value belongs to.
BundleKey = tuple[Hashable, Hashable]

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0
#: Fewer relations give no interval: a percentile bootstrap over 2-4 clusters has only a handful of
#: distinct resamples and understates the spread, so a verdict on them stays "no detectable difference".
MIN_RELATIONS = 5


@dataclass(frozen=True)
class Interval:
    """A mean over bundles and its bootstrap interval."""

    estimate: float
    """The mean over the bundles (NaN when there are none)."""
    low: float
    high: float
    relations: int
    """How many relations the mean averages."""
    bundles: int
    """How many (relation, trial) bundles it averages."""

    @property
    def detectable(self) -> bool:
        """Whether the interval excludes 0 (a real difference, for a difference)."""
        return not math.isnan(self.low) and (self.low > 0 or self.high < 0)

    def cell(self, fmt: str = "+.3f") -> str:
        """``+0.008 [-0.012, +0.027]``; ``–`` with no bundle; no interval with fewer than
        :data:`MIN_RELATIONS` relations."""
        if math.isnan(self.estimate):
            return "–"
        if math.isnan(self.low):
            return f"{self.estimate:{fmt}} [{_count(self.relations, 'relation')}: too few for an interval]"
        return f"{self.estimate:{fmt}} [{self.low:{fmt}}, {self.high:{fmt}}]"

    def difference_words(self, fmt: str = "+.3f") -> str:
        """The cell, then what it means: ``… : a real difference`` or ``… : no detectable difference``,
        with how many relations and bundles it rests on."""
        if math.isnan(self.estimate):
            return "– (no bundle has both values)"
        basis = f"{_count(self.relations, 'relation')}, {_count(self.bundles, 'bundle')}"
        if not math.isnan(self.low):
            basis += ", 95 % bootstrap interval"
        verdict = "a real difference" if self.detectable else "no detectable difference"
        return f"{self.cell(fmt)} ({basis}): {verdict}"


def bootstrap_mean(
    values: Mapping[BundleKey, float], resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> Interval:
    """The mean of ``values`` ({(relation, trial): value}, NaN values left out) and its percentile
    interval, resampling relations, then trials within each drawn relation (none for fewer than
    :data:`MIN_RELATIONS` relations)."""
    by_relation: dict[Hashable, list[float]] = defaultdict(list)
    for (relation, _), value in sorted(values.items(), key=lambda item: tuple(map(str, item[0]))):
        if not math.isnan(value):
            by_relation[relation].append(value)
    groups = list(by_relation.values())
    bundles = sum(map(len, groups))
    if not groups:
        return Interval(math.nan, math.nan, math.nan, 0, 0)
    estimate = sum(map(sum, groups)) / bundles
    if len(groups) < MIN_RELATIONS:
        return Interval(estimate, math.nan, math.nan, len(groups), bundles)
    generator = random.Random(seed)
    means = []
    for _ in range(resamples):
        total, count = 0.0, 0
        for group in generator.choices(groups, k=len(groups)):
            drawn = generator.choices(group, k=len(group))
            total += sum(drawn)
            count += len(drawn)
        means.append(total / count)
    means.sort()
    tail = (1 - level) / 2
    return Interval(estimate, _quantile(means, tail), _quantile(means, 1 - tail), len(groups), bundles)


def paired_difference(
    first: Mapping[BundleKey, float], second: Mapping[BundleKey, float], **options
) -> Interval:
    """``first − second`` over the bundles that have a number on both sides, with its interval."""
    shared = [
        key for key in first if key in second and not math.isnan(first[key]) and not math.isnan(second[key])
    ]
    return bootstrap_mean({key: first[key] - second[key] for key in shared}, **options)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _quantile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of sorted values, linear between order statistics (numpy's default)."""
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (position - below) * (ordered[above] - ordered[below])
