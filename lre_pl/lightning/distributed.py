"""The few collective operations lre_pl needs, valid with and without a process group."""

from __future__ import annotations

import math
from typing import Any

import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` without a process group)."""
    _, world = rank_and_world()
    if world == 1:
        return [obj]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


class UnrepeatedDistributedSampler(DistributedSampler):
    """Rank r takes samples r, r + world, ...: no sample twice, and the same number of batches everywhere.

    torch's DistributedSampler tops shorter shards up with repeated samples, which would count
    them twice in a mean Jacobian or a recall. Here a shorter shard is topped up with the index
    ``len(dataset)``, which :class:`PaddedDataset` turns into ``None`` and the collate functions
    drop, so every rank still runs the same number of steps (Lightning broadcasts a tensor on
    every training step: ranks with fewer batches would hang). Subclassing DistributedSampler
    keeps Lightning from replacing this sampler with its own.
    """

    def __init__(self, dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = math.ceil(len(dataset) / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __iter__(self):
        own = list(range(self.rank, len(self.dataset), self.num_replicas))
        return iter(own + [len(self.dataset)] * (self.num_samples - len(own)))

    def __len__(self) -> int:
        return self.num_samples


class PaddedDataset(Dataset):
    """A list whose one-past-the-end index is a padding slot (``None``)."""

    def __init__(self, items: list):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return None if index == len(self.items) else self.items[index]
