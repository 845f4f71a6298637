"""Faithfulness: does a decoded token start the object string?

:func:`prefix_hits` is the one definition, per sample and rank, that a fit's validation
(:class:`PrefixRecallAtK`) and a sweep's grid (:meth:`lre_pl.evaluation.grid.Decoder.hits`) both count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from lre_pl.dataset.matching import is_prefix_match


def prefix_hits(ranked_tokens: Sequence[Sequence[str]], objects: Sequence[str]) -> torch.Tensor:
    """[N, k] bool: whether the j-th ranked token of sample i is a prefix of its object.

    ``ranked_tokens[i]``: the k decoded tokens of sample i, best first (the same k for every sample).
    """
    if len(ranked_tokens) != len(objects):
        raise ValueError(f"{len(ranked_tokens)} rows of ranked tokens for {len(objects)} objects")
    k = len(ranked_tokens[0]) if len(ranked_tokens) else 0
    return torch.tensor(
        [[is_prefix_match(token, obj) for token in row] for row, obj in zip(ranked_tokens, objects)],
        dtype=torch.bool,
    ).reshape(len(objects), k)


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

    def update(self, hits: torch.Tensor) -> None:
        """``hits`` [N, k] bool of :func:`prefix_hits`, k at least max(top_k): one row per sample."""
        for column, k in enumerate(self.top_k):
            self.hits[column] += hits[:, :k].any(1).sum().to(self.hits)
        self.total += len(hits)

    def compute(self) -> dict[int, torch.Tensor]:
        if self.total == 0:
            raise RuntimeError("recall over zero samples: no known test sample reached this metric")
        return {k: self.hits[column] / self.total for column, k in enumerate(self.top_k)}
