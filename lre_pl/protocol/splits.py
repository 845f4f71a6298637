"""The known test samples' dev/test split: dev chooses hyper-parameters, test reports them."""

from __future__ import annotations

import math
import random

import torch

#: The splits of the known test samples rows report on.
SPLITS = ("dev", "test", "all")


def split_known(count: int, dev_fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """Positions (into the known samples) of the dev, test and all splits: a seeded shuffle."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    n_dev = min(count - 1, max(1, math.ceil(count * dev_fraction)))
    return {
        "dev": torch.tensor(sorted(order[:n_dev]), dtype=torch.long),
        "test": torch.tensor(sorted(order[n_dev:]), dtype=torch.long),
        "all": torch.arange(count),
    }
