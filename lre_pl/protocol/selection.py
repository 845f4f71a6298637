"""The one rule that chooses an LRE's hyper-parameters: the layer, then β at that layer, then the rank.

Every choice is "the highest score, the first of ties in a stated order":

- the layer: scored at the sweep's ``layer_search_beta``; ties go to the earlier layer of the bundle;
- β at that layer: the candidates are ``layer_search_beta`` and the grid's ``betas``; ties go to
  ``layer_search_beta`` (it already chose the layer), then to the grid's own order (as the sweep's
  config lists it, sorted or not);
- the causality edit's rank: ties go to the earlier rank of ``ranks``.

The sweep's evaluation, the β study and both reports all choose through :class:`SelectionRule`, so a
"β chosen on dev" means the same thing in every table.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

Key = TypeVar("Key", bound=Hashable)

#: selection -> (the split that chooses, the split reported on). ``dev``: chosen on the dev split,
#: reported on the held-out test split; ``paper``: the paper's way, chosen and reported on every
#: known sample.
SELECTIONS = {"dev": ("dev", "test"), "paper": ("all", "all")}


def first_best(scores: Mapping[Key, float], order: Iterable[Key]) -> Key | None:
    """The key of ``order`` with the highest score, the first of ties. A NaN score (a split with no
    sample) never beats a number; when no key has a number, the first key of ``order``; ``None`` when
    ``order`` is empty. Keys of ``order`` missing from ``scores`` count as NaN."""
    order = list(order)
    best, best_score = (order[0], math.nan) if order else (None, math.nan)
    for key in order:
        score = scores.get(key, math.nan)
        if not math.isnan(score) and (math.isnan(best_score) or score > best_score):
            best, best_score = key, score
    return best


@dataclass(frozen=True)
class SelectionRule:
    """The sweep's grid, as far as choosing goes."""

    betas: Sequence[float]
    """The β grid, in the order the sweep's config lists it."""
    layer_search_beta: float = 1.0
    """The β at which the layer is chosen; it is also the first β candidate."""
    ranks: Sequence[int] = ()
    """The causality edit's ranks, in the config's order."""

    @property
    def beta_order(self) -> list[float]:
        """Every β candidate, in tie order: ``layer_search_beta``, then the grid's other βs in grid order."""
        return [self.layer_search_beta, *(beta for beta in self.betas if beta != self.layer_search_beta)]

    @property
    def scan_betas(self) -> list[float]:
        """Every β a choice can return, in scan order: the grid's order, then ``layer_search_beta`` when
        the grid lacks it (the sweep scores it while choosing the layer)."""
        return [*self.betas, *([self.layer_search_beta] if self.layer_search_beta not in self.betas else [])]

    @classmethod
    def of_sweep(cls, config: Mapping) -> SelectionRule:
        """The rule of a sweep, from its ``sweep_config.json`` (as a dict)."""
        return cls(config["betas"], config.get("layer_search_beta", 1.0), config.get("ranks", ()))

    def layer(self, scores: Mapping[Key, float], layers: Sequence[Key]) -> Key | None:
        """The layer (scored at ``layer_search_beta``); ``layers`` in the bundle's order."""
        return first_best(scores, layers)

    def beta(self, scores: Mapping[float, float]) -> float | None:
        """β at the chosen layer from {β: score}."""
        return first_best(scores, self.beta_order)

    def rank(self, scores: Mapping[int, float]) -> int | None:
        """The edit's rank from {rank: score}."""
        return first_best(scores, self.ranks)

    def shared_beta(self, scores: Sequence[Mapping[float, float]]) -> float | None:
        """One β for many bundles ({β: score} each): the best mean score, ties as :meth:`beta`."""
        means = {
            beta: statistics.mean(score[beta] for score in scores)
            for beta in self.beta_order
            if scores and all(beta in score for score in scores)
        }
        return self.beta(means)
