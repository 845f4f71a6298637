"""What a fit accumulates over its training batches and processes, before the estimator runs.

Two pieces, each usable without a Trainer (the collectives are passed in):

- :class:`JacobianSums`: running sums of J_i and b_i per layer, and their count. Under DDP they are
  all-reduced (summed), never gathered: a gather would hold every process's d x d sum of every layer.
  Padding slots of a shorter shard are never added, so no sample is counted twice.
- :class:`SampleCollector`: each training sample's own tensors (s_i, o_i, ...), gathered from every
  process into :class:`TrainingSamples`, in the order a one-process run has them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

NO_SAMPLE = "no training sample reached the estimate: check the training dataloader"


class JacobianSums:
    """sum_i J_i and sum_i b_i (b_i = o_i - J_i s_i) of every layer, and the number of samples added.

    ``mean()`` is the LRE's estimate before any estimator runs: W = mean_i J_i, b = mean_i b_i.
    """

    def __init__(self, n_layers: int, d: int, device: torch.device | str | None = None):
        self.jacobians = torch.zeros(n_layers, d, d, device=device)  # [layer, d, d] sum_i J_i
        self.biases = torch.zeros(n_layers, d, device=device)  # [layer, d] sum_i b_i
        # A float tensor on the sums' device: reduced like them, and divided by as a tensor.
        self.count = torch.zeros((), device=device)  # [] samples added

    def add(self, jacobians: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]) -> None:
        """One batch: per layer, ``jacobians[i]`` [batch, d, d] J_i and ``biases[i]`` [batch, d] b_i."""
        for i, (jacobian, bias) in enumerate(zip(jacobians, biases, strict=True)):
            self.jacobians[i] += jacobian.sum(0)
            self.biases[i] += bias.sum(0)
        self.count += len(jacobians[0])

    def reduce(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace every sum by its sum over processes.

        ``reduce_sum`` is an all-reduce sum (a Lightning strategy's ``reduce(t, reduce_op="sum")``; it
        may work in place). Every process calls it in the same order: the count, J, then b.
        """
        self.count = reduce_sum(self.count)
        self.jacobians = reduce_sum(self.jacobians)
        self.biases = reduce_sum(self.biases)

    def mean(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean_i J_i [layer, d, d], mean_i b_i [layer, d]) of the samples added (and reduced)."""
        if self.count.item() == 0:
            raise RuntimeError(NO_SAMPLE)
        return self.jacobians / self.count, self.biases / self.count


@dataclass(frozen=True)
class TrainingSamples:
    """Every training sample's tensors, all processes gathered, in the training set's order (CPU, float32)."""

    subject_states: torch.Tensor  # [n, layer, d] s_i at every estimated layer
    output_states: torch.Tensor  # [n, d] o_i
    object_tokens: torch.Tensor  # [n] first token of each training object (long)
    biases: torch.Tensor | None = None  # [n, layer, d] b_i = o_i - J_i s_i (a bundle's fit only)
    jacobian_states: torch.Tensor | None = None  # [n, layer, d] J_i s_i (a bundle's fit only)
    jacobians: torch.Tensor | None = None  # [n, layer, d, d] J_i (only where asked: d^2 floats each)

    @classmethod
    def empty(cls, n_layers: int, d: int) -> TrainingSamples:
        """No sample: what a fit that made no estimate has (its tensors have zero rows)."""
        states = torch.zeros(0, n_layers, d)  # [0, layer, d]
        return cls(states, torch.zeros(0, d), torch.zeros(0).long(), states, states)


class SampleCollector:
    """Collects :class:`TrainingSamples`' tensors batch by batch on one process; :meth:`gather` joins all."""

    def __init__(self) -> None:
        self._batches: list[dict[str, torch.Tensor]] = []

    def add(self, indices: torch.Tensor, **tensors: torch.Tensor) -> None:
        """One batch: ``indices`` [batch] are the samples' positions in the training set; ``tensors``
        are :class:`TrainingSamples` fields [batch, ...], kept detached on the CPU (floats as float32)."""
        batch = {"index": indices, **tensors}
        self._batches.append(
            {key: value.detach().float().cpu() if value.is_floating_point() else value.cpu()
             for key, value in batch.items()}
        )  # fmt: skip

    def gather(self, gather_objects: Callable[[Any], list[Any]]) -> TrainingSamples:
        """Every process's samples in training-set order (processes' shards interleave).

        ``gather_objects(obj)`` returns every process's ``obj`` in process order (a collective).
        """
        batches = [batch for shard in gather_objects(self._batches) for batch in shard]
        if not batches:
            raise RuntimeError(NO_SAMPLE)
        order = torch.cat([batch["index"] for batch in batches]).argsort()
        names = [f.name for f in fields(TrainingSamples) if f.name in batches[0]]
        return TrainingSamples(
            **{name: torch.cat([batch[name] for batch in batches])[order] for name in names}
        )
