"""Question 14 (held_fixed) on the tiny sweep: its rows against readouts made by hand from the engine's
held-fixed Jacobians, and its verdict on hand-written numbers."""

import pytest
import test_beta_study
import torch
from test_beta_study import LAYER

from lre_pl.experiments.beta_study.questions import REGISTRY
from lre_pl.experiments.beta_study.questions.base import Findings
from lre_pl.experiments.beta_study.questions.held_fixed import NORM_METRIC, WAYS
from lre_pl.lm.jacobian import compute_jacobians
from lre_pl.lre.operator import relation_readout

# The tiny sweep and its study context at LAYER (test_beta_study's fixtures).
swept, grid, study = test_beta_study.swept, test_beta_study.grid, test_beta_study.study


@pytest.fixture(scope="module")
def held_rows(study):
    return REGISTRY["held_fixed"]().rows(study)


def test_rows_are_the_readouts_of_the_held_fixed_jacobians(study, held_rows):
    bundle, lm, i = study.bundle, study.decoder.lm, study.bundle.layer_index(LAYER)
    prompts = [item.prompt for item in study.train_prompts]
    s, o = bundle.train_subject_states[:, i], bundle.train_output_states  # [n, d]
    states = bundle.test_states(LAYER)[study.known]  # [known, d]
    betas = study.rule.scan_betas
    norms = {}
    for way, parts in WAYS.items():
        jacobians = compute_jacobians(lm, prompts, [LAYER], held_fixed=parts).jacobians[LAYER].float()
        weight = jacobians.mean(0)  # [d, d]
        bias = torch.stack([o[n] - jacobians[n] @ s[n] for n in range(len(s))]).mean(0)  # [d]
        if way == "plain":  # the sweep's own LRE
            torch.testing.assert_close(weight, bundle.weights[i], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(bias, bundle.biases[i], atol=1e-4, rtol=1e-4)
        rows = [row for row in held_rows if row["estimator"] == way]
        assert all(row["kind"] == "held_fixed" and row["layer"] == str(LAYER) for row in rows)
        norm = (states @ weight.T).norm(dim=-1)  # [known] ‖W s‖
        norms[way] = norm
        for split, positions in study.splits.items():
            [row] = [r for r in rows if r["metric"] == NORM_METRIC and r["split"] == split]
            assert row["value"] == pytest.approx(norm[positions].mean().item(), rel=1e-4)
            assert row["n"] == len(positions) and row["beta"] is None
        for beta in betas:
            readout = relation_readout(states @ weight.T, bias, beta)
            hits = study.decoder.hits(readout, study.objects)  # [known, 2]
            for split, positions in study.splits.items():
                for column, metric in enumerate(study.faithfulness_metrics):
                    [row] = [
                        r for r in rows if r["metric"] == metric and r["split"] == split and r["beta"] == beta
                    ]
                    assert row["value"] == hits[positions, column].float().mean().item(), (way, beta, split)
        assert len(rows) == len(study.splits) * (1 + 2 * len(betas))
    for way in ("attention", "norms", "attention+norms"):  # held fixed, J changes: the rows could differ
        assert (norms[way] - norms["plain"]).abs().max() > 1e-3 * norms["plain"].max(), way


def test_the_summary_gives_every_way_its_scan_and_norm(held_rows, study):
    question = REGISTRY["held_fixed"]()
    numbers = question.summarize(held_rows, study.rule)
    assert set(numbers["variants"]) == set(WAYS)
    for way, values in numbers["variants"].items():
        [row] = [
            r
            for r in held_rows
            if r["estimator"] == way and r["metric"] == NORM_METRIC and r["split"] == "all"
        ]
        assert values[NORM_METRIC] == row["value"] and values["n"] == 1
    text = question.render(numbers, Findings("m", study.rule))
    assert "Mean ‖W s‖ of the evaluated samples: plain " in text and "**Verdict.** " in text


def numbers_of(**ways) -> dict:
    """Numbers of the ways from (β = 1, tuned, dev-chosen β per relation) triples (five relations)."""
    keys = [(f"r{i}", 0) for i in range(5)]
    return {
        "variants": {way: {"median_beta": sorted(betas)[2]} for way, (_, _, betas) in ways.items()},
        "per_bundle": {
            way: {"beta_1": dict.fromkeys(keys, one), "chosen": dict.fromkeys(keys, tuned),
                  "chosen_beta": dict(zip(keys, betas))}
            for way, (one, tuned, betas) in ways.items()
        },
    }  # fmt: skip


PLAIN = (0.30, 0.60, (2.5,) * 5)
STRADDLES = (0.3, 0.6, (2.5, 2.25, 2.75, 2.25, 2.75))  # plain − it: 0, +0.25, −0.25, +0.25, −0.25
#: plain − it: +1.5 on r0, r2, r4 and +1.0 on r1, r3. A resample of the 5 relations with k draws of +1.5
#: has mean 1.0 + 0.1 k, k ~ Binomial(5, 0.6): P(k = 0) ≈ 0.01 < 2.5 % < P(k ≤ 1) ≈ 0.09 and P(k = 5) ≈ 0.08,
#: so the interval is [+1.10, +1.50] about +1.30.
LOWER = (0.5, 0.6, (1.0, 1.5, 1.0, 1.5, 1.0))


def test_the_verdict_names_the_part_that_lowers_beta():
    judge = REGISTRY["held_fixed"]().judge
    verdict = judge(
        numbers_of(plain=PLAIN, attention=STRADDLES, norms=LOWER, **{"attention+norms": STRADDLES})
    )
    assert verdict.word == "confirmed" and verdict.why.startswith(
        "holding norms fixed lowers the β the LRE needs"
    )
    assert "norms: plain's dev-chosen β − its +1.30 [+1.10, +1.50] (5 relations" in verdict.why
    only_both = numbers_of(plain=PLAIN, attention=STRADDLES, norms=STRADDLES, **{"attention+norms": LOWER})
    assert judge(only_both).why.startswith("holding attention and the norms together (neither alone) fixed")
    raised = (0.3, 0.6, (3.0, 3.25, 3.5, 3.25, 3.0))
    assert judge(
        numbers_of(plain=PLAIN, attention=raised, norms=raised, **{"attention+norms": raised})
    ).word == ("refuted")
    verdict = judge(
        numbers_of(plain=PLAIN, attention=STRADDLES, norms=raised, **{"attention+norms": STRADDLES})
    )
    assert verdict.word == "inconclusive" and verdict.why.startswith("no part held fixed lowers β detectably")
    assert "no detectable difference" in verdict.why
    # β chosen above 1 on dev, yet tuning it buys nothing on test (SmolLM2's two relations): nothing to remove.
    plain = (0.92, 0.87, (1.25, 1.5, 1.5, 1.25, 1.5))
    tuning_buys_nothing = numbers_of(plain=plain, attention=LOWER, norms=LOWER, **{"attention+norms": LOWER})
    verdict = judge(tuning_buys_nothing)
    assert verdict.word == "inconclusive" and verdict.why.startswith(
        "tuning β does not help the plain LRE here, nothing to remove"
    )
    assert "faithfulness at the dev-chosen β − at β = 1 -0.050 [-0.050, -0.050]" in verdict.why
    assert judge(numbers_of(plain=PLAIN)).why == "rows of ['plain'] only: every way needs its rows"
