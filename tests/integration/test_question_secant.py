"""Question 11 (secant versus tangent, the chord Jacobian) on the tiny sweep, against hand computations."""

import statistics

import pytest
import torch
from reference import full_forward_map
from test_beta_study import LAYER, grid, study, swept  # noqa: F401  (the tiny sweep's fixtures)

from lre_pl.experiments.beta_study.questions import REGISTRY
from lre_pl.experiments.beta_study.questions.base import VERDICTS, Findings, figure_name
from lre_pl.experiments.beta_study.questions.secant import PROFILE
from lre_pl.lre.chord import ChordJacobian
from lre_pl.lre.operator import relation_readout


@pytest.fixture(scope="module")
def rows(study):  # noqa: F811
    return REGISTRY["secant"]().rows(study)


def values(rows, metric, estimator="chord"):
    return [row["value"] for row in rows if row["metric"] == metric and row["estimator"] == estimator]


def test_profile_rows_follow_their_definitions(study, rows):  # noqa: F811
    b, i, lm = study.bundle, study.bundle.layer_index(LAYER), study.decoder.lm
    s, n = b.train_subject_states[:, i], len(b.train_subject_states)
    shares = values(rows, "recovered_share")
    assert len(shares) == n * (n - 1) and all(
        abs(share - 1) < 1e-3 for share in shares
    )  # fundamental theorem
    # Pair (0, 1) by hand: o(1) from a plain full forward of prompt 0 with s_1 written in, J(s_0) the
    # engine's Jacobian of prompt 0.
    function, state = full_forward_map(lm, study.train_prompts[0].prompt, LAYER)
    torch.testing.assert_close(state, s[0], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        change = function(s[1]) - function(s[0])
    step = s[1] - s[0]
    tangent = study.jacobians[0] @ step
    assert values(rows, "secant_over_tangent")[0] == pytest.approx(
        (change.norm() / tangent.norm()).item(), rel=1e-4
    )
    mean_w = b.weights[i] @ step
    assert values(rows, "secant_over_mean_W")[0] == pytest.approx(
        (change.norm() / mean_w.norm()).item(), rel=1e-4
    )
    u = change / change.norm()
    assert values(rows, "mean_W_profile")[0] == pytest.approx((u @ mean_w / change.norm()).item(), rel=1e-4)
    assert values(rows, f"{PROFILE}0.000000")[0] == pytest.approx(
        (u @ tangent / change.norm()).item(), rel=1e-4
    )
    nodes = study.settings.quadrature_nodes
    assert len({row["metric"] for row in rows if row["metric"].startswith(PROFILE)}) == nodes + 2
    [products] = [row for row in rows if row["metric"] == "seconds_products"]
    assert products["value"] > 0 and products["n"] == n * (n - 1) * nodes * (n + len(study))


def test_the_chord_scan_is_the_readout_of_a_formed_w_chord_and_the_lre_scan_the_bundle_s(study, rows):  # noqa: F811
    b, i, lm = study.bundle, study.bundle.layer_index(LAYER), study.decoder.lm
    s, o = b.train_subject_states[:, i], b.train_output_states
    prompts = [item.prompt for item in study.train_prompts]
    formed = ChordJacobian(study.settings.quadrature_nodes)(lm, prompts, LAYER, s, o).form()  # [d, d]
    projection, bias = study.projection(formed), (o - s @ formed.T).mean(0)
    expected = study.scan(lambda beta: relation_readout(projection, bias, beta), kind="secant", estimator="chord",
                          layer=str(LAYER))  # fmt: skip
    assert [row for row in rows if row["estimator"] == "chord" and row["beta"] is not None] == expected
    # The tiny model's hits barely move with the readout: W_chord s and b against the LRE's, by number.
    lre_projection, lre_bias = study.projection_and_bias()
    [scale] = values(rows, "projection_norm_ratio")
    assert scale == pytest.approx(
        (projection.norm(dim=-1) / lre_projection.norm(dim=-1)).mean().item(), rel=1e-4
    )
    [moved] = values(rows, "bias_relative_difference")
    assert moved == pytest.approx(((bias - lre_bias).norm() / lre_bias.norm()).item(), rel=1e-4)
    lre = {
        (r["beta"], r["split"]): r["value"]
        for r in rows
        if r["estimator"] == "lre" and r["metric"] == "faithfulness@1"
    }
    betas = study.rule.scan_betas
    assert [lre[beta, "test"] for beta in betas] == study.faithfulness_by_beta(betas, "test")


def test_the_secant_numbers_verdict_and_figure(study, rows):  # noqa: F811
    question = REGISTRY["secant"]()
    numbers = question.summarize(rows, study.rule)
    assert set(numbers["variants"]) == {"chord", "lre"}
    ratios = values(rows, "secant_over_tangent")
    assert numbers["secant_over_tangent"] == pytest.approx(statistics.median(ratios))
    assert numbers["recovered_share"] == pytest.approx(sum(values(rows, "recovered_share")) / len(ratios))
    word, why = question.judge(numbers)
    assert word in VERDICTS and f"{numbers['secant_over_tangent']:.2f}×" in why
    findings = Findings(model=study.bundle.model, rule=study.rule, numbers={"secant": numbers})
    text = question.render(numbers, findings)
    assert f"**Verdict.** {word}: " in text and figure_name(study.bundle.model, "secant_profile") in text
    assert list(question.figures(rows, study.bundle.model)) == [
        figure_name(study.bundle.model, "secant_profile")
    ]
