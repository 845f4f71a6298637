"""Which known test samples are evaluated, and their dev/test split: dev chooses hyper-parameters, test
reports them. One home for the known-sample cap (the sweep's ``max_known`` and the study's)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

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


@dataclass(frozen=True)
class KnownSamples:
    """The test samples of one (relation, trial) that are evaluated, and their dev/test split.

    ``indices`` [k] index the bundle's test samples; each split holds positions into ``indices``.
    """

    indices: torch.Tensor  # [k]
    splits: dict[str, torch.Tensor]  # split -> [positions]

    @classmethod
    def of(
        cls, evaluated: torch.Tensor, dev_fraction: float, seed: int, max_known: int | None = None
    ) -> KnownSamples:
        """The sweep's rule: of the ``evaluated`` [m] bool samples (the known ones, or all), at most
        ``max_known`` (a seeded subset), then the seeded dev/test split of those."""
        indices = evaluated.nonzero().flatten()
        if max_known is not None and len(indices) > max_known:
            chosen = sorted(random.Random(seed).sample(range(len(indices)), max_known))
            indices = indices[chosen]
        return cls(indices, split_known(len(indices), dev_fraction, seed))

    def __len__(self) -> int:
        return len(self.indices)

    def capped(self, count: int, seed: int) -> KnownSamples:
        """At most ``count`` samples: a seeded subset of the dev split and of the test split, in
        proportion, so that no sample that chose the sweep's layer and β becomes a test sample."""
        if len(self) <= count:
            return self
        rng = random.Random(seed)
        dev, test = self.splits["dev"].tolist(), self.splits["test"].tolist()
        n_dev = min(len(dev), max(1, round(count * len(dev) / len(self))))
        kept = {"dev": sorted(rng.sample(dev, n_dev)), "test": sorted(rng.sample(test, count - n_dev))}
        positions = sorted(kept["dev"] + kept["test"])  # into this split's samples
        new_position = {position: i for i, position in enumerate(positions)}
        splits = {
            split: torch.tensor([new_position[p] for p in kept[split]], dtype=torch.long) for split in kept
        }
        return KnownSamples(self.indices[positions], {**splits, "all": torch.arange(count)})
