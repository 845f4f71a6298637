"""Questions 13 (the secant gain) and 17 (confidence and distance) on a tiny model's sweep, each row
against an independent recomputation from the bundle."""

import dataclasses

import pytest
import torch
from test_sweep import tiny_config

from lre_pl.evaluation.context import Decoder
from lre_pl.experiments.beta_study.context import StudyContext, SweepStudy
from lre_pl.experiments.beta_study.questions.base import Findings
from lre_pl.experiments.beta_study.questions.confidence import MEASURES, Confidence
from lre_pl.experiments.beta_study.questions.per_sample_beta import PerSampleBeta
from lre_pl.experiments.beta_study.questions.secant_gain import SecantGain, secant_gain_rows
from lre_pl.experiments.sweep.finished import chosen_points
from lre_pl.experiments.sweep.runner import Sweep
from lre_pl.lm.models import load_language_model
from lre_pl.lre.bundle import Bundle
from lre_pl.protocol.correlation import spearman
from lre_pl.protocol.folder import SweepFolder
from lre_pl.protocol.rows import read_rows

LAYER = 1


@pytest.fixture(scope="module")
def swept(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    Sweep(tiny_config(tiny_model_dir, folder), command="lre-pl sweep (test)").run()  # two relations
    return folder


@pytest.fixture(scope="module")
def grid(swept, tiny_model_dir):
    return tiny_config(tiny_model_dir, swept).grid()


@pytest.fixture(scope="module")
def study(swept, tiny_model_dir, grid):
    """One bundle's study context at the study's layer."""
    bundle = Bundle.load(swept / "bundles" / "country_capital_city" / "trial_0.pt")
    return StudyContext.of(bundle, grid, Decoder(load_language_model(tiny_model_dir), grid.top_k), LAYER)


@pytest.fixture(scope="module")
def varied(study):
    """The bundle with a W that maps each evaluated s onto its own o and a small random b: the tiny
    model's own LRE names every answer at β = 0, so there the smallest β would not vary at all."""
    b, i = study.bundle, study.bundle.layer_index(LAYER)
    s, o = b.test_states(LAYER)[study.known], b.test_output_states[study.known]  # [k, d] each
    weights, biases = b.weights.clone(), b.biases.clone()
    weights[i] = (torch.linalg.pinv(s) @ o).T  # W s_j = o_j
    biases[i] = 0.03 * o.mean(0).norm() * torch.randn(o.shape[-1], generator=torch.Generator().manual_seed(0))
    return dataclasses.replace(study, bundle=dataclasses.replace(b, weights=weights, biases=biases))


def by_hand_gains(context: StudyContext) -> tuple[float, list[float]]:
    """β_LS and the top-5 direction gains as least-squares fits (lstsq), from the bundle's own tensors."""
    b, i = context.bundle, context.bundle.layer_index(context.layer)
    dev = [context.samples.indices[p].item() for p in context.samples.splits["dev"].tolist()]
    s = torch.cat(
        [b.train_subject_states[:, i], b.test_subject_states[dev, b.state_layers.index(context.layer)]]
    )
    o = torch.cat([b.train_output_states, b.test_output_states[dev]])
    delta_s, delta_o = (s - s.mean(0)).double(), (o - o.mean(0)).double()
    weight = b.weights[i].double()
    projected = delta_s @ weight.T
    beta_ls = torch.linalg.lstsq(projected.reshape(-1, 1), delta_o.reshape(-1, 1)).solution.item()
    left, sigma, right_t = torch.linalg.svd(weight)
    gains = []
    for k in range(5):
        x = sigma[k] * delta_s @ right_t[k]  # [m]
        gains.append(torch.linalg.lstsq(x[:, None], (delta_o @ left[:, k])[:, None]).solution.item())
    return beta_ls, gains


def gain_rows(rows: list[dict]) -> dict[str, float]:
    return {row["estimator"]: row["value"] for row in rows if row["metric"] == "gain"}


def test_the_secant_gain_rows_are_least_squares_fits_on_estimation_and_dev_samples(study):
    rows = secant_gain_rows(study, 1.5)
    beta_ls, gains = by_hand_gains(study)
    fitted = gain_rows(rows)
    assert fitted["beta_ls"] == pytest.approx(beta_ls, rel=1e-6)
    assert [fitted[f"direction_{k}"] for k in range(1, 6)] == pytest.approx(gains, rel=1e-6)
    n = study.bundle.n_train + len(study.splits["dev"])
    assert {row["n"] for row in rows if row["split"] == "train+dev"} == {n}
    [chosen] = [row for row in rows if row["metric"] == "dev_chosen_beta"]
    assert (chosen["beta"], chosen["value"], chosen["layer"], chosen["selection"]) == (
        1.5,
        1.5,
        str(LAYER),
        "dev",
    )
    shares = [row["value"] for row in rows if row["metric"] == "share"]
    assert len(shares) == 5 and 0 < sum(shares) <= 1 + 1e-9


def test_no_test_sample_enters_beta_ls(study):
    """Changing every test sample's states leaves β_LS as it was; changing one dev sample's does not."""
    b = study.bundle
    test = study.known[study.splits["test"]]
    column = b.state_layers.index(LAYER)

    def with_changed(samples: torch.Tensor) -> StudyContext:
        states, outputs = b.test_subject_states.clone(), b.test_output_states.clone()
        states[samples, column] += 5.0 * torch.randn(len(samples), states.shape[-1])
        outputs[samples] *= -3.0
        changed = dataclasses.replace(b, test_subject_states=states, test_output_states=outputs)
        return dataclasses.replace(study, bundle=changed)

    before = gain_rows(secant_gain_rows(study, 1.0))
    assert gain_rows(secant_gain_rows(with_changed(test), 1.0)) == before
    dev = study.known[study.splits["dev"]][:1]
    assert gain_rows(secant_gain_rows(with_changed(dev), 1.0))["beta_ls"] != pytest.approx(before["beta_ls"])


def test_the_secant_gain_question_reads_each_bundle_at_the_sweeps_dev_chosen_layer_and_beta(
    swept, grid, study, tmp_path
):
    folder = SweepFolder(swept)
    points = chosen_points(read_rows(folder.row_files()))
    sweep = SweepStudy(folder, grid, study.decoder, points, "tiny", tmp_path)
    question = SecantGain()
    rows = question.rows(sweep)
    assert {(row["relation"], row["trial"]) for row in rows} == set(points) and len(points) == 2
    for (relation, trial), (layer, beta) in points.items():
        mine = [row for row in rows if row["relation"] == relation]
        [chosen] = [row for row in mine if row["metric"] == "dev_chosen_beta"]
        assert chosen["value"] == beta and {row["layer"] for row in mine} == {str(layer)}
        assert gain_rows(mine)["beta_ls"] == pytest.approx(
            by_hand_gains(sweep.context(relation, trial))[0], rel=1e-6
        )
    # The β is the sweep's (here every β ties on the tiny model, so the rule's first, 1.0): read from its points.
    other = {key: (layer, 0.5 + index) for index, (key, (layer, _)) in enumerate(sorted(points.items()))}
    relabelled = question.rows(dataclasses.replace(sweep, points=other))
    assert {
        (r["relation"], r["trial"], r["value"]) for r in relabelled if r["metric"] == "dev_chosen_beta"
    } == {(*key, beta) for key, (_, beta) in other.items()}
    assert question.covers(rows, sweep)
    assert not question.covers([row for row in rows if row["relation"] != "country capital city"], sweep)
    numbers = question.summarize(rows, grid.selection_rule)
    assert numbers["n"] == 2 and sorted(p["chosen_beta"] for p in numbers["points"]) == sorted(
        beta for _, beta in points.values()
    )
    # two bundles: too few relations for an interval, so the verdict stays inconclusive
    assert "[2 relations: too few for an interval] (2 relations, 2 bundles)" in question.judge(numbers).why
    text = question.render(numbers, Findings("tiny", grid.selection_rule, {"secant_gain": numbers}))
    assert (
        "| relation | category | β_LS | dev-chosen β | gain along σ_1 |" in text
        and "**Verdict.** inconclusive" in text
    )
    assert "over 2 relations" in question.measured(numbers)
    assert list(question.figures(rows, "models/tiny")) == ["secant_gain_tiny.png"]


def test_the_confidence_rows_follow_their_definitions(varied):
    study, question = varied, Confidence()
    rows = question.rows(study)
    k, b, lm = len(study), study.bundle, study.decoder.lm
    by_measure = {measure: [row for row in rows if row["metric"] == measure] for measure in MEASURES}
    assert all(len(values) == k for values in by_measure.values()) and len(rows) == 3 * k
    # The smallest β: question 4's own test-sample rows, in the same order.
    per_sample = [row["value"] for row in PerSampleBeta().rows(study) if row["estimator"] == "test_mean_W_b"]
    assert len(set(per_sample)) > 5  # it varies over the samples
    for values in by_measure.values():
        assert [row["beta"] for row in values] == pytest.approx(per_sample, nan_ok=True)
    # The probability of the LM's own top-1 token through the decoder's softmax; the margin from sorted logits.
    o = b.test_output_states[study.known]
    top = study.decoder.top_tokens(o, probabilities=True)
    assert [row["value"] for row in by_measure["own_probability"]] == pytest.approx(
        top.probabilities[:, 0].tolist(), rel=1e-5
    )
    with torch.no_grad():
        logits = lm.decode(o).sort(-1, descending=True).values
    assert [row["value"] for row in by_measure["logit_margin"]] == pytest.approx(
        (logits[:, 0] - logits[:, 1]).tolist(), rel=1e-5
    )
    s_bar = b.train_subject_states[:, b.layer_index(LAYER)].mean(0)
    distance = [(b.test_states(LAYER)[j] - s_bar).norm().item() for j in study.known.tolist()]
    assert [row["value"] for row in by_measure["distance_to_mean_subject"]] == pytest.approx(
        distance, rel=1e-5
    )
    splits = [row["split"] for row in by_measure["logit_margin"]]
    assert splits.count("dev") == len(study.splits["dev"]) and splits.count("test") == len(
        study.splits["test"]
    )
    assert all(splits[p] == "dev" for p in study.splits["dev"].tolist())


def test_the_confidence_summary_pools_and_leaves_out_samples_without_a_beta(varied):
    question = Confidence()
    rows = question.rows(varied)
    numbers = question.summarize(rows, varied.rule)
    pairs = {m: [(row["beta"], row["value"]) for row in rows if row["metric"] == m] for m in MEASURES}
    for measure, found in pairs.items():  # one bundle: its ρ is the pooled one
        expected = spearman(*zip(*found))
        assert numbers["measures"][measure]["pooled_rho"] == pytest.approx(expected, abs=1e-12)
        assert numbers["measures"][measure]["median_relation_rho"] == pytest.approx(expected, abs=1e-12)
    assert numbers["measures"]["logit_margin"]["pooled_rho"] < 0  # b pulls away: a wide margin resists it
    assert (numbers["samples"], numbers["without_beta"], numbers["bundles"]) == (len(varied), 0, 1)
    for row in rows[::4]:  # samples without a β are counted and left out
        row["beta"] = float("nan")
    numbers = question.summarize(rows, varied.rule)
    kept = [
        (row["beta"], row["value"])
        for row in rows
        if row["metric"] == "own_probability" and row["beta"] == row["beta"]
    ]
    assert numbers["without_beta"] == len(varied) - len(kept) > 0
    assert numbers["measures"]["own_probability"]["pooled_rho"] == pytest.approx(
        spearman(*zip(*kept)), abs=1e-12
    )
    text = question.render(numbers, Findings("tiny", varied.rule, {"confidence": numbers}))
    assert f"{numbers['without_beta']} have no β ≤ 10" in text and "**Verdict.** inconclusive" in text  # < 20
    assert list(question.figures(rows, "tiny")) == ["confidence_tiny.png"]
