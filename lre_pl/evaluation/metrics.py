"""Faithfulness metrics: does a decoded token start the object string?"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from lre_pl.dataset.matching import is_prefix_match


class PrefixRecallAtK(Metric):
    """Recall@k of prefix matches: the fraction of samples whose top-k tokens contain a match.

    States are two small sums, reduced across ranks by torchmetrics.
    """

    full_state_update = False

    def __init__(self, top_k: Sequence[int] = (1, 3), **kwargs):
        super().__init__(**kwargs)
        self.top_k = tuple(top_k)
        self.add_state("hits", default=torch.zeros(len(self.top_k)), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, ranked_tokens: Sequence[Sequence[str]], targets: Sequence[str]) -> None:
        """``ranked_tokens[i]``: the decoded tokens of sample i, best first (at least max(top_k))."""
        for tokens, target in zip(ranked_tokens, targets):
            matches = [is_prefix_match(token, target) for token in tokens]
            for column, k in enumerate(self.top_k):
                self.hits[column] += float(any(matches[:k]))
        self.total += len(targets)

    def compute(self) -> dict[int, torch.Tensor]:
        if self.total == 0:
            raise RuntimeError("recall over zero samples: no known test sample reached this metric")
        return {k: self.hits[column] / self.total for column, k in enumerate(self.top_k)}
