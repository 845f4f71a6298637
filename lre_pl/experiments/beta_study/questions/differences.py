"""What an explanation's verdict rests on: the differences its prediction gives a direction, each a mean
over (relation, trial) bundles with its 95 % bootstrap interval (:mod:`lre_pl.protocol.intervals`, the
one rule), and the one way they make a verdict.

Every part is oriented so that the hypothesis predicts a difference above 0. The hypothesis is
confirmed when every part's interval lies above 0, refuted when some part's interval lies below 0 (the
prediction is a conjunction: one part reversed falsifies it), and inconclusive otherwise, since an
interval that holds 0 is no detectable difference and one relation gives no interval at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from lre_pl.experiments.beta_study.questions.base import Verdict
from lre_pl.protocol.intervals import BundleKey, Interval, bootstrap_mean, paired_difference


class Part(NamedTuple):
    """One difference a hypothesis predicts above 0."""

    label: str
    """What the difference is, e.g. ``secant / tangent − 1``."""
    interval: Interval
    fmt: str = "+.3f"

    def words(self) -> str:
        """``label +0.031 [-0.010, +0.072] (2 relations, 2 bundles, …): no detectable difference``."""
        return f"{self.label} {self.interval.difference_words(self.fmt)}"

    @property
    def above(self) -> bool:
        return self.interval.detectable and self.interval.low > 0

    @property
    def below(self) -> bool:
        return self.interval.detectable and self.interval.high < 0


def difference(
    first: Mapping[BundleKey, float], second: Mapping[BundleKey, float] | float, label: str, fmt: str = "+.3f"
) -> Part:
    """The part ``first − second`` per bundle (``second``: per bundle, or one number for every bundle)."""
    if isinstance(second, Mapping):
        return Part(label, paired_difference(first, second), fmt)
    return Part(label, bootstrap_mean({key: value - second for key, value in first.items()}), fmt)


def weigh(parts: Sequence[Part], lead: str = "") -> Verdict:
    """The verdict of ``parts`` (see the module), its ``why`` each part with its interval after ``lead``."""
    said = "; ".join(part.words() for part in parts) or "no difference to weigh"
    why = f"{lead}: {said}" if lead else said
    if parts and all(part.above for part in parts):
        return Verdict("confirmed", why)
    if any(part.below for part in parts):
        return Verdict("refuted", why)
    return Verdict("inconclusive", why)


def over_trials(values: Mapping[BundleKey, float]) -> dict[str, list[float]]:
    """{relation: its trials' values, by trial} of per-bundle ``values``, relations sorted (for
    :func:`~lre_pl.protocol.markdown.mean_std_cell`)."""
    relations: dict[str, list[float]] = {}
    for (relation, _), value in sorted(values.items(), key=lambda item: tuple(map(str, item[0]))):
        relations.setdefault(relation, []).append(value)
    return dict(sorted(relations.items()))
