"""The secant gain β_LS and its per-direction gains on hand-made tensors with a known answer, Spearman's
ρ with ties against a hand computation, and the two hypotheses' verdicts at their thresholds."""

import math

import pytest
import torch

from lre_pl.experiments.beta_study.questions.confidence import Confidence, spearman_where_found
from lre_pl.experiments.beta_study.questions.secant_gain import SecantGain, secant_gains
from lre_pl.protocol.correlation import average_ranks, pearson, spearman
from lre_pl.protocol.selection import SelectionRule


def orthogonal(d: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(
        torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )[0]


def test_an_output_twice_w_delta_s_has_gain_two_along_every_direction():
    generator = torch.Generator().manual_seed(0)
    weight, delta_s = torch.randn(6, 6, generator=generator), torch.randn(40, 6, generator=generator)
    beta_ls, gains, shares = secant_gains(weight, delta_s, 2 * delta_s @ weight.T)
    assert beta_ls == pytest.approx(2.0, abs=1e-6)  # Δo formed in float32
    assert gains == pytest.approx([2.0] * 5, abs=1e-5) and len(shares) == 5
    assert 0 < sum(shares) < 1  # five of six directions


def test_gains_differ_along_directions_when_one_scalar_is_the_wrong_shape():
    """W = U Σ Vᵀ and Δo = U diag(g σ) Vᵀ Δs: the gain along direction k is g_k, and β_LS is the
    share-weighted mean of every direction's gain (by hand: Σ⟨Δo, W Δs⟩ / Σ‖W Δs‖²)."""
    d, left, right = 4, orthogonal(4, 1), orthogonal(4, 2)
    sigma, g = (
        torch.tensor([5.0, 3.0, 2.0, 0.5], dtype=torch.float64),
        torch.tensor([3.0, 1.0, -1.0, 2.0], dtype=torch.float64),
    )
    weight = left @ torch.diag(sigma) @ right.T
    delta_s = torch.randn(30, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    delta_o = delta_s @ (left @ torch.diag(g * sigma) @ right.T).T
    beta_ls, gains, shares = secant_gains(weight, delta_s, delta_o, directions=d)
    assert gains == pytest.approx(g.tolist(), abs=1e-10)
    assert sum(shares) == pytest.approx(1.0, abs=1e-12)
    projected = delta_s @ weight.T
    by_hand = ((delta_o * projected).sum() / projected.square().sum()).item()
    assert beta_ls == pytest.approx(by_hand, abs=1e-12)
    assert beta_ls == pytest.approx(sum(gain * share for gain, share in zip(gains, shares)), abs=1e-10)
    assert beta_ls != pytest.approx(g.mean().item(), abs=0.1)  # weighted by the shares, not a plain mean
    # Only the top `directions` are reported, largest singular value first.
    assert secant_gains(weight, delta_s, delta_o, directions=2)[1] == pytest.approx([3.0, 1.0], abs=1e-10)


def test_an_output_orthogonal_to_w_delta_s_adds_no_gain():
    generator = torch.Generator().manual_seed(4)
    weight, delta_s = torch.randn(5, 5, generator=generator), torch.randn(20, 5, generator=generator)
    projected = delta_s @ weight.T
    noise = torch.randn(20, 5, generator=generator)
    noise -= (noise * projected).sum() / projected.square().sum() * projected  # orthogonal to W Δs in sum
    assert secant_gains(weight, delta_s, 1.5 * projected + noise)[0] == pytest.approx(1.5, abs=1e-6)


def test_spearman_uses_average_ranks_for_ties():
    assert average_ranks([3.0, 1.0, 2.0, 2.0, 3.0, 0.0]).tolist() == [5.5, 2.0, 3.5, 3.5, 5.5, 1.0]
    # Ranks [1, 2.5, 2.5, 4] and [1, 3, 2, 4]: r = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10).
    assert spearman([1.0, 2.0, 2.0, 3.0], [1.0, 3.0, 2.0, 4.0]) == pytest.approx(3 / math.sqrt(10), abs=1e-12)
    assert spearman([1.0, 2.0, 3.0, 4.0], [1.0, 8.0, 27.0, 1000.0]) == pytest.approx(
        1.0
    )  # monotone, not linear
    assert pearson([1.0, 2.0, 3.0, 4.0], [1.0, 8.0, 27.0, 1000.0]) < 0.9
    assert spearman([3.0, 2.0, 1.0], [1.0, 2.0, 3.0]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])) and math.isnan(spearman([1.0], [2.0]))
    with pytest.raises(ValueError, match="pearson needs paired values, got 2 and 3"):
        pearson([1.0, 2.0], [1.0, 2.0, 3.0])


def test_samples_without_a_beta_are_left_out_of_rho():
    pairs = [(1.0, 1.0), (float("nan"), 9.0), (2.0, 3.0), (2.0, 2.0), (3.0, 4.0)]
    assert spearman_where_found(pairs) == pytest.approx(3 / math.sqrt(10), abs=1e-12)
    assert math.isnan(spearman_where_found([(1.0, 1.0), (float("nan"), 2.0), (2.0, 3.0)]))  # two left


def gain_points(*bundles: tuple[float, float]) -> dict:
    """Question 13's numbers from (β_LS, dev-chosen β) per relation (trial 0), direction gains 1 and 1.2."""
    rows = []
    for i, (beta_ls, chosen) in enumerate(bundles):
        base = {"relation": f"r{i}", "trial": 0, "category": "c"}
        rows += [base | {"estimator": "beta_ls", "metric": "gain", "value": beta_ls},
                 base | {"estimator": "lre", "metric": "dev_chosen_beta", "value": chosen},
                 base | {"estimator": "direction_1", "metric": "gain", "value": 1.0},
                 base | {"estimator": "direction_2", "metric": "gain", "value": 1.2}]  # fmt: skip
    return SecantGain().summarize(rows, SelectionRule([1.0]))


@pytest.mark.parametrize(
    "bundles, word",
    [
        # β_LS 1.5 on the dev-chosen β 1.5 (+0.5 above 1, +0.5 closer than 1), relations of noise about it
        ([(1.5, 1.5), (1.4, 1.5), (1.6, 1.5), (1.5, 1.6), (1.45, 1.5)], "confirmed"),
        # β_LS below 1: the secant is flatter than W
        ([(0.8, 1.5), (0.7, 1.5), (0.9, 1.25), (0.85, 1.5), (0.75, 1.25)], "refuted"),
        # above 1, but farther from the β chosen than 1 is
        ([(1.5, 1.0), (1.4, 1.0), (1.6, 1.0), (1.45, 1.0), (1.55, 1.0)], "refuted"),
        # β_LS − 1 straddles 0
        ([(1.5, 1.5), (0.5, 1.5), (1.5, 1.5), (0.6, 1.5), (1.4, 1.5)], "inconclusive"),
        # the confirmed case's first 4 relations: too few for an interval
        ([(1.5, 1.5), (1.4, 1.5), (1.6, 1.5), (1.5, 1.6)], "inconclusive"),
        ([(1.5, 1.5)], "inconclusive"),  # one relation: no interval
    ],
)
def test_the_secant_gain_verdict_reads_the_intervals_of_its_two_differences(bundles, word):
    numbers = gain_points(*bundles)
    found = SecantGain().judge(numbers)
    assert found.word == word
    assert f"median β_LS {numbers['median_beta_ls']:.2f}" in found.why
    mean = sum(beta_ls for beta_ls, _ in bundles) / len(bundles) - 1
    assert f"β_LS − 1 {mean:+.2f} [" in found.why
    assert ("no detectable difference" in found.why) == (word == "inconclusive")
    relations = len(bundles)
    too_few = f"[{relations} relation{'s' * (relations > 1)}: too few for an interval]"
    assert (too_few in found.why) == (relations < 5)


def test_the_secant_gain_summary_pairs_each_bundles_beta_ls_with_its_chosen_beta():
    rows = []
    for relation, category, beta_ls, chosen, gains in (("a", "x", 1.5, 2.0, [1.0, 2.0]), ("b", "y", 2.0, 3.0, [2.0, 2.0]),
                                                       ("c", "x", 3.0, 3.5, [3.0, 2.4])):  # fmt: skip
        base = {"relation": relation, "trial": 0, "category": category}
        rows.append(base | {"estimator": "beta_ls", "metric": "gain", "value": beta_ls})
        rows.append(base | {"estimator": "lre", "metric": "dev_chosen_beta", "value": chosen})
        rows += [
            base | {"estimator": f"direction_{k}", "metric": "gain", "value": g}
            for k, g in enumerate(gains, 1)
        ]
        rows += [base | {"estimator": f"direction_{k}", "metric": "share", "value": 0.1} for k in (1, 2)]
    numbers = SecantGain().summarize(rows, SelectionRule([1.0]))
    assert [(p["relation"], p["beta_ls"], p["chosen_beta"]) for p in numbers["points"]] == [
        ("a", 1.5, 2.0), ("b", 2.0, 3.0), ("c", 3.0, 3.5)
    ]  # fmt: skip
    assert numbers["points"][0]["direction_gains"] == [1.0, 2.0]
    assert numbers["pearson"] == pytest.approx(pearson([1.5, 2.0, 3.0], [2.0, 3.0, 3.5]))
    assert numbers["spearman"] == pytest.approx(1.0) and numbers["median_beta_ls"] == 2.0
    assert numbers["median_spread"] == pytest.approx(0.2)  # spreads 1/1.5, 0/2, 0.6/3


def confidence_rows(*slopes: float, samples: int = 8) -> list[dict]:
    """Question 17's rows: per relation (trial 0) ``samples`` samples whose β is 1 + slope · k for the
    k-th value of every measure, so that each relation's ρ is the sign of its slope (NaN for 0)."""
    return [
        {"relation": f"r{i}", "trial": 0, "metric": measure, "beta": 1.0 + slope * k, "value": float(k)}
        for i, slope in enumerate(slopes)
        for measure in ("own_probability", "logit_margin", "distance_to_mean_subject")
        for k in range(samples)
    ]


@pytest.mark.parametrize(
    "slopes, word",
    [
        ((0.1, 0.2, 0.1, 0.3, 0.2), "confirmed"),  # every relation's ρ is +1
        ((-0.1, -0.2, -0.1, -0.3, -0.2), "refuted"),  # every relation's ρ is −1
        ((0.1, -0.1, 0.1, -0.1, 0.1), "inconclusive"),  # the relations disagree: the interval holds 0
        ((0.1, 0.2, 0.1, 0.3), "inconclusive"),  # every ρ is +1, but 4 relations are too few for an interval
        ((0.1,), "inconclusive"),  # one relation: no interval
    ],
)
def test_the_confidence_verdict_reads_the_interval_of_each_measures_rho_per_bundle(slopes, word):
    numbers = Confidence().summarize(confidence_rows(*slopes), SelectionRule([1.0]))
    found = Confidence().judge(numbers)
    assert found.word == word
    assert f"samples with a β ({numbers['without_beta']} without)" in found.why
    mean = sum(math.copysign(1.0, slope) for slope in slopes) / len(slopes)
    assert f"ρ per bundle (probability) {mean:+.2f} [" in found.why
    assert ("no detectable difference" in found.why) == (word == "inconclusive")
    relations = len(slopes)
    too_few = f"[{relations} relation{'s' * (relations > 1)}: too few for an interval]"
    assert (too_few in found.why) == (relations < 5)
