"""The operator's maths: the readout, low-rank views and the low-rank pseudo-inverse, against torch.linalg."""

import pytest
import torch

from lre_pl.errors import InputError
from lre_pl.lre.operator import LinearRelationOperator, WeightSpectrum, relation_readout


def _weight(d=12, rank=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(d, d, generator=generator)
    if rank is not None:  # a product of [d, rank] and [rank, d]: exactly rank `rank`
        weight = torch.randn(d, rank, generator=generator) @ torch.randn(rank, d, generator=generator)
    return weight


def test_full_rank_views_are_w_and_its_inverse():
    weight = _weight()
    spectrum = WeightSpectrum.of(weight)
    torch.testing.assert_close(spectrum.low_rank(12), weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        spectrum.pinv(12), torch.linalg.inv(weight.double()).float(), atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(spectrum.pinv(12) @ weight, torch.eye(12), atol=1e-4, rtol=0)


@pytest.mark.parametrize("rank", [1, 4, 9])
def test_low_rank_is_the_truncated_svd(rank):
    weight = _weight(seed=rank)
    sigma = torch.linalg.svdvals(weight.double())
    approximation = WeightSpectrum.of(weight).low_rank(rank)
    assert torch.linalg.matrix_rank(approximation.double(), rtol=1e-6) == rank
    # Eckart-Young: the error of the best rank-r approximation is the norm of the dropped singular values.
    error = torch.linalg.norm((weight - approximation).double())
    torch.testing.assert_close(error, sigma[rank:].norm(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("rank", [0, 3, 5])
def test_pinv_of_rank_r_is_the_pseudo_inverse_of_w_r(rank):
    weight = _weight(seed=10 + rank)
    spectrum = WeightSpectrum.of(weight)
    expected = torch.linalg.pinv(spectrum.low_rank(rank).double(), rtol=1e-6).float()
    torch.testing.assert_close(spectrum.pinv(rank), expected, atol=1e-4, rtol=1e-4)


def test_singular_values_of_zero_are_never_inverted():
    weight = _weight(rank=3)  # sigma_4.. are ~1e-7 of sigma_1: numerically zero
    spectrum = WeightSpectrum.of(weight)
    assert spectrum.full_rank == 3
    assert torch.isfinite(spectrum.pinv(12)).all()
    torch.testing.assert_close(spectrum.pinv(12), spectrum.pinv(3))
    torch.testing.assert_close(weight @ spectrum.pinv(12) @ weight, weight, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("rank", [-1, 13])
def test_rank_out_of_range(rank):
    with pytest.raises(InputError, match=rf"rank={rank} out of range: use 0..12"):
        WeightSpectrum.of(_weight()).pinv(rank)


def test_operator_applies_beta_w_s_plus_b_and_its_low_rank_view():
    weight, bias = _weight(), torch.randn(12, generator=torch.Generator().manual_seed(1))
    operator = LinearRelationOperator(weight, bias, 2.5, 8, "r", "m", 5, 0)
    states = torch.randn(3, 12, generator=torch.Generator().manual_seed(2))  # [batch, d]
    torch.testing.assert_close(operator(states), 2.5 * states @ weight.T + bias)
    torch.testing.assert_close(relation_readout(states @ weight.T, bias, 2.5), operator(states))
    reduced = operator.low_rank(2)
    torch.testing.assert_close(reduced(states), 2.5 * states @ operator.spectrum.low_rank(2).T + bias)
    assert operator.weight is weight and reduced.beta == 2.5 and reduced.layer == 8


def test_beta_acts_on_the_projection_the_bias_or_both():
    projection, bias = torch.tensor([[1.0, -2.0]]), torch.tensor([4.0, 6.0])
    torch.testing.assert_close(relation_readout(projection, bias, 2.0), torch.tensor([[6.0, 2.0]]))
    torch.testing.assert_close(relation_readout(projection, bias, 2.0, "bias"), torch.tensor([[3.0, 1.0]]))
    torch.testing.assert_close(relation_readout(projection, bias, 2.0, "both"), torch.tensor([[10.0, 8.0]]))
    assert relation_readout(projection, bias, 0.0, "bias").isnan().all()  # 1/β on b has no β = 0
    with pytest.raises(ValueError, match="acts_on='b': use one of"):
        relation_readout(projection, bias, 2.0, "b")


def test_an_estimated_operator_holds_cpu_copies_and_the_prompts_as_run(tmp_path):
    from lre_pl.dataset.prompts import EncodedPrompt
    from lre_pl.dataset.relations import load_relation
    from lre_pl.lre.estimators import LinearRegression

    weights = torch.randn(2, 12, 12, requires_grad=True)  # [layer, d, d]: the operator takes one layer
    biases = torch.randn(2, 12)  # [layer, d]
    prompts = [EncodedPrompt("France is Paris. Spain is", (1, 2, 3), 4), EncodedPrompt("Spain is", (5,), 0)]
    operator = LinearRelationOperator.estimated(
        weights[1], biases[1], 2.25, "emb", relation=load_relation("country capital city"), model="m",
        n_train=2, seed=7, train_prompts=prompts, test_prompt_template="{} is", estimator=LinearRegression(0.01),
    )  # fmt: skip
    assert not operator.weight.requires_grad and operator.weight.device.type == "cpu"
    torch.testing.assert_close(operator.weight, weights[1].detach())
    torch.testing.assert_close(operator.bias, biases[1])
    assert (operator.beta, operator.layer, operator.relation, operator.model) == (
        2.25,
        "emb",
        "country capital city",
        "m",
    )
    assert (operator.n_train, operator.seed, operator.test_prompt_template) == (2, 7, "{} is")
    assert operator.train_prompts == ["France is Paris. Spain is", "Spain is"]
    assert operator.train_subject_token_index == [4, 0]
    assert operator.estimator == "LinearRegression(ridge=0.01)"
    loaded = LinearRelationOperator.load(operator.save(tmp_path / "operator.pt"))
    assert loaded.train_prompts == operator.train_prompts and torch.equal(loaded.weight, operator.weight)


def test_an_operator_on_a_full_disk_is_one_line_and_leaves_no_file(tmp_path, monkeypatch):
    import errno
    import os
    from pathlib import Path

    operator = LinearRelationOperator(_weight(), torch.zeros(12), 1.0, 8, "r", "m", 5, 0)

    def full_disk(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(
        InputError, match=r"cannot write operator.pt in .* \(No space left on device\): it needs \d+"
    ):
        operator.save(tmp_path / "run" / "operator.pt")
    assert list((tmp_path / "run").iterdir()) == []
