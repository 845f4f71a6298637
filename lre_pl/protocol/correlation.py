"""Correlations in torch (scipy is not a dependency): Pearson's r, and Spearman's ρ as Pearson's r of
ranks, ties given their average rank (so that ρ matches the textbook definition on tied data)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def average_ranks(values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """[n] ranks 1..n of ``values`` [n]; tied values share the mean of the ranks they span."""
    values = torch.as_tensor(values, dtype=torch.float64)
    ordered, order = values.sort(stable=True)
    _, group, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()  # [groups] the 1-based rank of each group's last member
    ranks = torch.empty_like(values)
    ranks[order] = (last - (counts - 1) / 2)[group]
    return ranks


def pearson(x: Sequence[float] | torch.Tensor, y: Sequence[float] | torch.Tensor) -> float:
    """Pearson's r of paired ``x`` and ``y`` [n]; NaN when either is constant or n < 2."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    if len(x) != len(y):
        raise ValueError(f"pearson needs paired values, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    scale = (dx.square().sum() * dy.square().sum()).sqrt()
    return (dx @ dy / scale).item() if scale > 0 else float("nan")


def spearman(x: Sequence[float] | torch.Tensor, y: Sequence[float] | torch.Tensor) -> float:
    """Spearman's ρ of paired ``x`` and ``y`` [n]: Pearson's r of their average ranks."""
    return pearson(average_ranks(x), average_ranks(y))
