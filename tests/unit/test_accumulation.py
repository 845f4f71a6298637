"""A fit's accumulation without a Trainer: Jacobian sums over batches and processes, gathered samples."""

import pytest
import torch

from lre_pl.lre.accumulation import JacobianSums, SampleCollector, TrainingSamples

N_LAYERS, D = 2, 3


def _per_sample(n=7, seed=0):
    """Hand tensors: J_i [n, layer, d, d] and b_i [n, layer, d] of n samples."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, N_LAYERS, D, D, generator=generator), torch.randn(
        n, N_LAYERS, D, generator=generator
    )


def _add(sums: JacobianSums, jacobians: torch.Tensor, biases: torch.Tensor) -> None:
    """One batch as the module adds it: per layer [batch, d, d] and [batch, d]."""
    sums.add(jacobians.unbind(1), biases.unbind(1))


def test_the_mean_is_the_mean_of_every_sample_added_in_batches():
    jacobians, biases = _per_sample()
    sums = JacobianSums(N_LAYERS, D)
    for start in (0, 2, 4, 6):  # batches of 2, 2, 2 and 1
        _add(sums, jacobians[start : start + 2], biases[start : start + 2])
    assert sums.count == 7
    weight, bias = sums.mean()
    assert weight.shape == (N_LAYERS, D, D) and bias.shape == (N_LAYERS, D)
    for i in range(N_LAYERS):
        torch.testing.assert_close(weight[i], torch.stack([j[i] for j in jacobians]).mean(0))
        torch.testing.assert_close(bias[i], torch.stack([b[i] for b in biases]).mean(0))


def test_two_processes_reduced_by_a_sum_equal_one_process_fed_everything():
    jacobians, biases = _per_sample()
    one = JacobianSums(N_LAYERS, D)
    _add(one, jacobians, biases)
    # Process r takes samples r, r + 2, ... (the unrepeated sampler): 4 and 3 samples, no repeat.
    processes = [JacobianSums(N_LAYERS, D) for _ in range(2)]
    for rank, sums in enumerate(processes):
        for start in range(rank, 7, 4):  # batches of up to 2 of this rank's samples
            own = torch.arange(start, min(start + 4, 7), 2)
            _add(sums, jacobians[own], biases[own])
    # A fake all-reduce: each process's n-th call gets the sum of both processes' n-th tensors.
    before = [[sums.count.clone(), sums.jacobians.clone(), sums.biases.clone()] for sums in processes]
    calls = []

    def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
        position = len(calls) % 3  # this process's n-th call
        calls.append(tensor.shape)
        return before[0][position] + before[1][position]

    for sums in processes:
        sums.reduce(all_reduce_sum)
    assert calls == [torch.Size([]), (N_LAYERS, D, D), (N_LAYERS, D)] * 2  # count, J, b on every process
    for sums in processes:
        assert sums.count == 7
        for got, expected in zip(sums.mean(), one.mean()):
            torch.testing.assert_close(got, expected)


def test_no_sample_is_an_error_not_a_division_by_zero():
    with pytest.raises(RuntimeError, match="no training sample reached the estimate"):
        JacobianSums(N_LAYERS, D).mean()


def test_gathered_samples_come_back_in_training_set_order():
    """Two processes' shards (rank r holds samples r, r + 2, ...) joined by a fake gather."""
    n = 5
    states = torch.arange(n * N_LAYERS * D, dtype=torch.float64).reshape(n, N_LAYERS, D)  # [n, layer, d]
    outputs = torch.arange(n * D, dtype=torch.float64).reshape(n, D) + 100  # [n, d]
    tokens = torch.arange(n) + 1000  # [n]
    processes = [SampleCollector() for _ in range(2)]
    for rank, collector in enumerate(processes):
        own = torch.arange(rank, n, 2)
        for batch in own.split(2):
            collector.add(
                batch, subject_states=states[batch], output_states=outputs[batch], object_tokens=tokens[batch]
            )
    rank_0 = []  # what process 0 contributes to the gather (its own gather sees only itself here)
    processes[0].gather(lambda mine: rank_0.append(mine) or [mine])
    gathered = processes[1].gather(lambda mine: [rank_0[0], mine])
    assert isinstance(gathered, TrainingSamples)
    torch.testing.assert_close(gathered.subject_states, states.float())  # floats kept as float32
    torch.testing.assert_close(gathered.output_states, outputs.float())
    assert gathered.object_tokens.tolist() == tokens.tolist() and gathered.biases is None
    one = SampleCollector()
    one.add(torch.arange(n), subject_states=states, output_states=outputs, object_tokens=tokens)
    alone = one.gather(lambda mine: [mine])
    assert torch.equal(alone.subject_states, gathered.subject_states)
    with pytest.raises(RuntimeError, match="no training sample reached the estimate"):
        SampleCollector().gather(lambda mine: [mine, []])


def test_empty_training_samples_have_zero_rows_of_every_shape():
    empty = TrainingSamples.empty(N_LAYERS, D)
    assert empty.subject_states.shape == empty.biases.shape == empty.jacobian_states.shape == (0, N_LAYERS, D)
    assert empty.output_states.shape == (0, D) and empty.object_tokens.dtype == torch.long
    assert empty.jacobians is None
