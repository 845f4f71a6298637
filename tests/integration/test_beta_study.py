"""The β study on a tiny model's sweep: each question against its definition, the run, the report, bad input."""

import json
import statistics
from pathlib import Path

import pytest
import torch
from test_sweep import RELATIONS, tiny_config

from lre_pl.errors import InputError
from lre_pl.evaluation.context import Decoder
from lre_pl.experiments.beta_study.context import StudyContext, StudySettings
from lre_pl.experiments.beta_study.questions import EXPLANATIONS, PER_BUNDLE, QUESTIONS, REGISTRY, STUDY
from lre_pl.experiments.beta_study.questions.after_norm import after_norm_operator
from lre_pl.experiments.beta_study.questions.base import figure_name
from lre_pl.experiments.beta_study.questions.bias_variants import BIAS_VARIANTS, bias_variant
from lre_pl.experiments.beta_study.questions.per_sample_beta import FINE_BETAS, smallest_beta
from lre_pl.experiments.beta_study.report import ModelStudy, study_markdown
from lre_pl.experiments.beta_study.study import BetaStudyConfig, run_beta_study
from lre_pl.experiments.sweep.finished import chosen_points
from lre_pl.experiments.sweep.runner import Sweep
from lre_pl.lm.models import load_language_model
from lre_pl.lre.bundle import Bundle
from lre_pl.lre.operator import relation_readout
from lre_pl.protocol.folder import SweepFolder
from lre_pl.protocol.rows import read_rows
from lre_pl.protocol.selection import SelectionRule

LAYER = 1


@pytest.fixture(scope="module")
def swept(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    Sweep(
        tiny_config(tiny_model_dir, folder), command="lre-pl sweep (test)"
    ).run()  # two relations, two categories
    return folder


@pytest.fixture(scope="module")
def grid(swept, tiny_model_dir):
    return tiny_config(tiny_model_dir, swept).grid()


@pytest.fixture(scope="module")
def study(swept, tiny_model_dir, grid):
    """One bundle's study context at the study's layer."""
    bundle = Bundle.load(swept / "bundles" / "country_capital_city" / "trial_0.pt")
    lm = load_language_model(tiny_model_dir)
    return StudyContext.of(bundle, grid, Decoder(lm, grid.top_k), LAYER)


@pytest.fixture(scope="module")
def answers(study):
    """{question: its answer on the bundle} of every per-bundle question (asked once)."""
    return {name: REGISTRY[name]().answer(study) for name in PER_BUNDLE}


@pytest.fixture(scope="module")
def answered(answers):
    """The rows of every per-bundle question."""
    return [row for answer in answers.values() for row in answer.rows]


def test_bias_variants_follow_their_definitions(study):
    bundle, i = study.bundle, study.bundle.layer_index(LAYER)
    unembedding = study.decoder.lm.unembedding.weight.detach()
    weight, s, o = bundle.weights[i], bundle.train_subject_states[:, i], bundle.train_output_states
    torch.testing.assert_close(
        bias_variant("paper", bundle, LAYER, unembedding), (o - bundle.train_jacobian_states[:, i]).mean(0)
    )
    torch.testing.assert_close(
        bias_variant("mean_output", bundle, LAYER, unembedding), o.mean(0) - weight @ s.mean(0)
    )
    corner = bias_variant("corner", bundle, LAYER, unembedding)
    rows = unembedding[bundle.train_object_tokens]
    direction = sum(row / row.norm() for row in rows)
    torch.testing.assert_close(corner / corner.norm(), direction / direction.norm())
    torch.testing.assert_close(corner.norm(), bundle.biases[i].norm())
    assert bias_variant("none", bundle, LAYER, unembedding).abs().max() == 0
    with pytest.raises(ValueError, match="bias variant 'mean'"):
        bias_variant("mean", bundle, LAYER, unembedding)


def test_beta_on_the_bias_decodes_like_beta_on_the_projection(study):
    lm = study.decoder.lm
    projection, bias = torch.randn(4, lm.hidden_size), torch.randn(lm.hidden_size) * 5
    torch.testing.assert_close(relation_readout(projection, bias, 2.0, "bias"), projection + bias / 2)
    torch.testing.assert_close(relation_readout(projection, bias, 2.0, "both"), 2 * (projection + bias))
    for beta in (0.5, 2.0, 4.0):  # an RMSNorm is scale-invariant up to its eps
        torch.testing.assert_close(
            lm.decode(relation_readout(projection, bias, beta, "projection")), lm.decode(relation_readout(projection, bias, beta, "bias")),
            atol=1e-4, rtol=1e-4,
        )  # fmt: skip


def test_smallest_beta_is_the_first_grid_beta_that_names_the_answer():
    generator = torch.Generator().manual_seed(0)
    unembedding = torch.randn(7, 5, generator=generator)
    projection, bias = torch.randn(30, 5, generator=generator), torch.randn(30, 5, generator=generator)
    own = torch.randint(7, (30,), generator=generator)

    def answers(hidden):
        return (hidden @ unembedding.T).argmax(-1)

    found = smallest_beta(answers, projection, bias, own)
    for row in range(30):
        expected = next(
            (
                beta
                for beta in FINE_BETAS
                if answers((beta * projection[row] + bias[row])[None])[0] == own[row]
            ),
            None,
        )
        assert (found[row].isnan() and expected is None) or found[row].item() == pytest.approx(expected)


def test_study_rows_answer_each_question(study, answered):
    rows = answered
    kinds = {row["kind"] for row in rows}
    assert {"bias_variants", "where_beta", "unit_s", "per_sample_beta", "per_sample_w", "after_norm", "residual",
            "fixed_beta"} <= kinds  # fmt: skip
    assert {row["estimator"] for row in rows if row["kind"] == "bias_variants"} == {
        *BIAS_VARIANTS,
        "mean_subject",
    }
    gap = [row["value"] for row in rows if row["metric"] == "max_logit_gap_projection_vs_bias"]
    assert len(gap) == 1 and gap[0] < 1e-3
    faith = {  # β on W s and 1/β on b: the same hits at every β
        (row["estimator"], row["beta"], row["split"]): row["value"]
        for row in rows if row["kind"] == "where_beta" and row["metric"] == "faithfulness@1"
    }  # fmt: skip
    assert all(faith["projection", b, s] == faith["bias", b, s] for _, b, s in faith if b > 0)
    train_betas = [row["value"] for row in rows if row["estimator"] == "train_own_J_b"]
    assert len(train_betas) == 5 and all(value <= 1 for value in train_betas)  # β = 1 gives o_i itself
    # The residual against a hand computation on all evaluated samples.
    b, i = study.bundle, study.bundle.layer_index(LAYER)
    s = b.test_states(LAYER)[study.known]
    residual = b.test_output_states[study.known] - (s @ b.weights[i].T + b.biases[i])
    [norm] = [r["value"] for r in rows if r["metric"] == "residual_norm" and r["split"] == "all"]
    assert norm == pytest.approx(residual.norm(dim=-1).mean().item(), rel=1e-5)


def test_the_study_runs_resumes_per_question_and_reports(swept, study, tmp_path):
    [out] = run_beta_study(
        BetaStudyConfig(sweep_dirs=[str(swept)], output_dir=str(tmp_path / "study"), questions=["residual"])
    )
    assert out == tmp_path / "study" / swept.name
    rows_file = out / "rows" / "residual" / "country_capital_city__trial_0.jsonl"
    first = rows_file.stat().st_mtime_ns
    assert sorted(p.name for p in (out / "rows").iterdir()) == ["residual"]
    report = tmp_path / "docs" / "beta_study.md"
    config = BetaStudyConfig(sweep_dirs=[str(swept)], output_dir=str(tmp_path / "study"), report=str(report))
    run_beta_study(config, command="(test)")
    assert rows_file.stat().st_mtime_ns == first  # resumed: only the questions not yet answered ran
    assert sorted(p.name for p in (out / "rows").iterdir()) == sorted(  # the β study's ten, by default
        [*(name for name in PER_BUNDLE if name in STUDY), "global_beta.jsonl", "across_trials.jsonl"]
    )
    text = report.read_text()
    for heading in ("1. Bias variants", "2. Where β acts", "3. Unit s", "4. Per-sample β", "5. Each sample's own W_i",
                    "6. The Jacobian after the final norm", "7. The linearisation residual", "8. β held fixed",
                    "9. Can β be one global constant"):  # fmt: skip
        assert heading in text, heading
    model = json.loads((swept / "sweep_config.json").read_text())["model"]
    assert f"Made by {model}'s sweep: `lre-pl sweep (test)`; the study: `(test)`." in text
    assert "No relation has two or more evaluated trials" in text  # one trial in this sweep
    assert (report.parent / figure_name(model, "per_sample_beta")).stat().st_size > 0
    assert (out / "beta_study.md").read_text() == text
    with open(out / "results.csv") as table:
        assert sum(1 for _ in table) == 1 + len(read_rows(sorted((out / "rows").rglob("*.jsonl"))))
    global_rows = read_rows([out / "rows" / "global_beta.jsonl"])
    learned = {(r["estimator"], r["relation"], r["category"]) for r in global_rows if r["metric"] == "beta"}
    assert ("learned:global:dev", None, None) in learned and ("learned:category:dev", None, "bias") in learned
    assert ("learned:relation:dev", "country capital city", None) in learned
    compared = [r["estimator"] for r in global_rows if r["metric"] == "faithfulness@1"]
    assert set(compared) == {"best_per_relation", "paper_2.25", "beta_1", "learned:global:dev", "learned:category:dev",
                             "learned:relation:dev", "learned:global:train", "heldout:global:dev", "grid:global:dev",
                             "grid:category:dev", "oracle:global:test", "oracle:category:test",
                             "oracle:relation:test"}  # fmt: skip
    # The grid's single β by hand: the β of the sweep's grid with the best mean dev faithfulness.
    points = chosen_points(read_rows(sorted((swept / "rows").glob("*.jsonl"))))
    grid = tiny_config(study.decoder.lm.spec, swept).grid()
    studies = [StudyContext.of(Bundle.load(SweepFolder(swept).bundle(relation, trial)), grid,
                               study.decoder, layer) for (relation, trial), (layer, _) in sorted(points.items())]  # fmt: skip
    betas = [1.0] + [
        beta for beta in grid.betas if beta != 1.0
    ]  # ties: the layer-search β first, as the sweep
    dev = [statistics.mean(s.faithfulness_by_beta([beta], "dev")[0] for s in studies) for beta in betas]
    [grid_beta] = [
        r["value"] for r in global_rows if r["estimator"] == "grid:global:dev" and r["metric"] == "beta"
    ]
    assert grid_beta == betas[dev.index(max(dev))]
    per_category = {r["category"]: r["value"] for r in global_rows
                    if r["estimator"] == "grid:category:dev" and r["metric"] == "beta"}  # fmt: skip
    best = {r["category"]: r["beta"] for r in global_rows if r["estimator"] == "best_per_relation"}
    assert per_category == best  # one relation per category: its grid β is the sweep's own dev choice
    test = [dict(zip(betas, s.faithfulness_by_beta(betas, "test"))) for s in studies]
    oracle = {r["relation"]: r["value"] for r in global_rows if r["estimator"] == "oracle:relation:test"
              and r["metric"] == "beta"}  # fmt: skip
    assert oracle == {s.bundle.relation: max(betas, key=t.get) for s, t in zip(studies, test)}
    # A row file that no longer covers the sweep's bundles (here: relabelled) is redone; one that does is kept.
    path = out / "rows" / "global_beta.jsonl"
    path.write_text(path.read_text().replace('"trial": 0', '"trial": 7'))
    across = (out / "rows" / "across_trials.jsonl").stat().st_mtime_ns
    run_beta_study(config, command="(test)")
    assert '"trial": 7' not in path.read_text() and '"trial": 0' in path.read_text()
    with pytest.raises(InputError, match="was studied with max_known=50, not 20: rerun with its settings"):
        run_beta_study(
            BetaStudyConfig(sweep_dirs=[str(swept)], output_dir=str(tmp_path / "study"), max_known=20)
        )
    assert (out / "rows" / "across_trials.jsonl").stat().st_mtime_ns == across
    # Two models side by side: the answers table has a column per model, each question a section per model.
    rows = read_rows(sorted((out / "rows").rglob("*.jsonl")))
    rule = SelectionRule(grid.betas, grid.layer_search_beta, grid.ranks)
    two = {
        name: ModelStudy(
            [r | {"model": name} for r in rows], {}, QUESTIONS, rule
        )  # the explanations: no rows
        for name in ("model-a", "model-b")
    }
    text, numbers = study_markdown(two, ["(two)"])
    assert text.startswith("# The β study: model-a, model-b\n\nMade by (two).")
    sections = len(QUESTIONS)  # every question answered: a section each per model
    assert (
        "|  | model-a | model-b |" in text
        and text.count("### model-a") == text.count("### model-b") == sections
    )
    assert numbers["model-a"]["global_beta"]["grid:global:dev"]["beta"] == grid_beta
    assert (
        compared.count("heldout:global:dev") == 1 and compared.count("beta_1") == 2
    )  # held out: the other half
    assert list((out / "tensorboard").glob("learned_global_dev/version_0/events.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert {"beta_study/text_summary", "per_sample_w/country_capital_city__trial_0/text_summary"} <= set(
        events.Tags()["tensors"]
    )


def test_a_capped_study_keeps_a_subset_of_the_sweeps_own_dev_and_test_splits(study, grid):
    capped = StudyContext.of(study.bundle, grid, study.decoder, LAYER, StudySettings(max_known=6))
    assert len(study.known) > 6 and len(capped.known) == 6
    for split in ("dev", "test"):  # as sample indices of the bundle
        kept = capped.known[capped.splits[split]].tolist()
        assert kept and set(kept) <= set(study.known[study.splits[split]].tolist()), split
    assert sorted(capped.splits["dev"].tolist() + capped.splits["test"].tolist()) == list(range(6))
    assert capped.objects == [study.bundle.test_objects[i] for i in capped.known.tolist()]
    hidden = relation_readout(
        study.bundle.test_states(LAYER)[capped.known] @ study.bundle.weights[study.bundle.layer_index(LAYER)].T,
        study.bundle.biases[study.bundle.layer_index(LAYER)], 2.0,
    )  # fmt: skip
    expected = study.decoder.hits(hidden, capped.objects)[capped.splits["test"], 0].float().mean().item()
    assert capped.test_faithfulness(2.0) == pytest.approx(expected)
    assert StudyContext.of(
        study.bundle, grid, study.decoder, LAYER, StudySettings(max_known=1000)
    ).known.equal(study.known)


def test_the_best_shared_beta_maximises_the_group_mean_first_of_ties():
    from lre_pl.experiments.beta_study.questions.global_beta import best_shared_betas

    scores = [{1.0: 0.5, 2.0: 0.9, 3.0: 0.1}, {1.0: 0.6, 2.0: 0.2, 3.0: 0.7}, {1.0: 0.4, 2.0: 0.4, 3.0: 0.0}]
    # Means over all three: 0.5, 0.5, 0.267: a tie, broken toward the layer-search β, then the grid's order.
    assert best_shared_betas(scores, ["all"] * 3, SelectionRule([1.0, 2.0, 3.0], 1.0)) == {"all": 1.0}
    assert best_shared_betas(scores, ["all"] * 3, SelectionRule([1.0, 2.0, 3.0], 2.0)) == {"all": 2.0}
    assert best_shared_betas(scores, ["all"] * 3, SelectionRule([2.0, 1.0, 3.0], 3.0)) == {"all": 2.0}
    assert best_shared_betas(scores, ["a", "b", "a"], SelectionRule([1.0, 2.0, 3.0])) == {"a": 2.0, "b": 3.0}


def test_bad_study_input_is_one_clear_error(swept, tmp_path):
    with pytest.raises(InputError, match="holds no sweep_config.json: run lre-pl sweep into it first"):
        run_beta_study(BetaStudyConfig(sweep_dirs=[str(tmp_path)]))
    with pytest.raises(InputError, match=r"questions=\['why'\]: choose from"):
        run_beta_study(BetaStudyConfig(sweep_dirs=[str(swept)], questions=["why"]))
    with pytest.raises(InputError, match="max_known=1 must be at least 2"):
        run_beta_study(BetaStudyConfig(sweep_dirs=[str(swept)], max_known=1))
    with pytest.raises(InputError, match="fit_epochs=0 must be at least 1"):
        run_beta_study(BetaStudyConfig(sweep_dirs=[str(swept)], fit_epochs=0))
    with pytest.raises(InputError, match="sweep_dirs is empty"):
        run_beta_study(BetaStudyConfig(sweep_dirs=[]))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "sweep_config.json").write_text((Path(swept) / "sweep_config.json").read_text())
    with pytest.raises(InputError, match="are both of .*: study one folder per model"):
        run_beta_study(BetaStudyConfig(sweep_dirs=[str(swept), str(empty)]))
    with pytest.raises(InputError, match="has no evaluated relation"):
        run_beta_study(BetaStudyConfig(sweep_dirs=[str(empty)]))
    damaged = tmp_path / "study"
    (damaged / swept.name).mkdir(parents=True)
    (damaged / swept.name / "study_settings.json").write_text('{"max_known": ')
    with pytest.raises(InputError) as raised:
        run_beta_study(BetaStudyConfig(sweep_dirs=[str(swept)], output_dir=str(damaged)))
    assert str(raised.value) == (
        f"{damaged / swept.name / 'study_settings.json'} is damaged (JSONDecodeError): delete "
        f"{damaged / swept.name} to study again from the start"
    )


def test_the_lightning_fit_of_beta_is_the_plain_adam_loop(study):
    """fit_betas (trainer.fit, full batches) against lre_pl.lre.beta.learn_beta's hand-written loop on the same samples."""
    from lre_pl.experiments.beta_study.global_beta import collect_samples, fit_betas
    from lre_pl.lre.beta import learn_beta

    tokenizer = study.decoder.lm.tokenizer
    samples = collect_samples([(study.bundle, LAYER, study.known, study.splits)], tokenizer, "dev", "global")
    assert samples.group_names == ["all"] and len(samples.targets) == len(study.splits["dev"])
    learned = fit_betas(study.decoder.lm.spec, samples, epochs=20, batch_size=len(samples.targets))
    reference = learn_beta(
        samples.projections, samples.biases[0], samples.targets, study.decoder.lm.decode, steps=20, lr=0.05
    )
    assert learned["all"] == pytest.approx(reference.betas[-1], rel=1e-4)
    assert learned["all"] != pytest.approx(1.0, abs=1e-3)  # it moved
    per_relation = collect_samples(
        [(study.bundle, LAYER, study.known, study.splits)], tokenizer, "train", "relation"
    )
    assert per_relation.group_names == ["country capital city"] and len(per_relation.targets) == 5


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sweep_dirs", "[{tmp}]"], "holds no sweep_config.json: run lre-pl sweep into it first"),
        (["--sweep_dirs", "[{swept}]", "--questions", '["why"]'], "questions=['why']: choose from"),
    ],
)
def test_the_cli_reports_bad_input_in_one_line(run_cli, swept, tmp_path, flags, message):
    flags = [flag.format(tmp=tmp_path, swept=swept) for flag in flags]
    code, stderr = run_cli("beta-study", *flags)
    lines = stderr.strip().splitlines()
    assert code == 2 and lines[-1].startswith("lre-pl: error: ") and message in lines[-1], lines
    assert not (Path(swept) / "beta_study").exists()


def test_the_recomputed_jacobians_match_an_independent_full_forward(study):
    from reference import reference_jacobian

    lm = study.decoder.lm
    for row, item in enumerate(study.train_prompts[:2]):
        expected, _ = reference_jacobian(lm, item.prompt, LAYER)
        torch.testing.assert_close(study.jacobians[row], expected, atol=1e-4, rtol=1e-3)


def test_unit_s_and_after_norm_follow_their_definitions(study, answered):
    """The unit-s LRE read at β = 1 by hand; the after-norm W against autograd through norm(F(s))."""
    from reference import full_forward_map

    b, lm, i = study.bundle, study.decoder.lm, study.bundle.layer_index(LAYER)
    rows = answered
    s, jacobians = b.train_subject_states[:, i], study.jacobians
    unit_weight = sum(s[n].norm() * jacobians[n] for n in range(len(s))) / len(s)
    biases = b.train_output_states - torch.einsum("nij,nj->ni", jacobians, s)
    test = b.test_states(LAYER)[study.known]
    hidden = (test / test.norm(dim=-1, keepdim=True)) @ unit_weight.T + biases.mean(0)
    expected = study.decoder.hits(hidden, study.objects)[study.splits["test"], 0].float().mean().item()
    [value] = [r["value"] for r in rows if r["kind"] == "unit_s" and r["estimator"] == "unit_s" and r["beta"] == 1.0
               and r["split"] == "test" and r["metric"] == "faithfulness@1"]  # fmt: skip
    assert value == pytest.approx(expected)

    weight, bias = after_norm_operator(lm, jacobians[:1], s[:1], b.train_output_states[:1])
    function, state = full_forward_map(lm, study.train_prompts[0].prompt, LAYER)
    normed = torch.autograd.functional.jacobian(lambda x: lm.final_norm(function(x)), state)
    torch.testing.assert_close(weight, normed, atol=1e-4, rtol=1e-3)
    with torch.no_grad():
        torch.testing.assert_close(
            bias, lm.final_norm(function(state)) - normed @ state, atol=1e-4, rtol=1e-3
        )


def test_per_sample_w_and_fixed_beta_rows(study, answers, answered, swept):
    from lre_pl.protocol.rows import read_rows

    b, i = study.bundle, study.bundle.layer_index(LAYER)
    rows = answered
    z_norms = [r["value"] for r in rows if r["kind"] == "per_sample_w" and r["estimator"] == "own_W_i"
               and r["metric"] == "z_norm"]  # fmt: skip
    expected = (b.train_jacobian_states[:, i] + b.biases[i]).norm(dim=-1)
    assert z_norms == pytest.approx(expected.tolist(), rel=1e-5)
    table = answers["per_sample_w"].table
    assert table.count("| own_W_i |") == 5 and table.count("| mean_W |") == 5
    # With β held at 1 the layer is chosen as the sweep chooses it (at layer_search_beta = 1).
    [fixed] = [r for r in rows if r["kind"] == "fixed_beta" and r["estimator"] == "beta=1.0"
               and r["metric"] == "faithfulness@1"]  # fmt: skip
    [chosen] = [r for r in read_rows(sorted((swept / "rows").glob("country*.jsonl"))) if r["kind"] == "selected"
                and r["selection"] == "dev" and r["estimator"] == "lre" and r["metric"] == "faithfulness@1"]  # fmt: skip
    assert fixed["layer"] == chosen["layer"]


def test_the_mean_subject_bias_is_the_lm_at_the_mean_state(study):
    from reference import full_forward_map

    from lre_pl.experiments.beta_study.questions.bias_variants import mean_subject_bias

    b, lm, i = study.bundle, study.decoder.lm, study.bundle.layer_index(LAYER)
    prompts = [item.prompt for item in study.train_prompts]
    mean = b.train_subject_states[:, i].mean(0)
    with torch.no_grad():
        outputs = torch.stack([full_forward_map(lm, prompt, LAYER)[0](mean) for prompt in prompts])
    expected = outputs.mean(0) - b.weights[i] @ mean
    torch.testing.assert_close(mean_subject_bias(lm, prompts, b, LAYER), expected, atol=1e-5, rtol=1e-4)


def test_every_beta_config_names_known_questions_and_one_config_per_question():
    import yaml

    folder = Path(__file__).parents[2] / "configs" / "beta"
    configs = {
        path.stem: BetaStudyConfig(**yaml.safe_load(path.read_text())) for path in folder.glob("*.yaml")
    }
    assert set(configs) == {*QUESTIONS, "all", "explain"}
    # Every question reads the folders the shipped sweep configs of the two models write; the explanations
    # of β (questions with a hypothesis) keep their rows apart, on the β study's relations, all in one
    # folder with one setting, so that a question answered by its own config is not redone by explain.yaml.
    sweeps = [
        yaml.safe_load((folder.parent / "sweep" / name).read_text())["output_dir"]
        for name in ("smollm2_beta.yaml", "gemma3_full.yaml")
    ]
    assert set(STUDY) | set(EXPLANATIONS) == set(QUESTIONS) and len(STUDY) == 10
    explain = configs["explain"]
    assert explain.questions == [name for name in EXPLANATIONS if name in explain.questions]
    assert set(explain.costly_relations) < set(explain.relations) and len(explain.relations) == 12
    for name, config in configs.items():
        assert config.sweep_dirs == sweeps, name
        explains = name == "explain" or (name in REGISTRY and REGISTRY[name].hypothesis)
        if explains:
            assert (config.output_dir, config.relations) == (explain.output_dir, explain.relations), name
            assert config.settings == explain.settings, name
        else:
            assert (config.output_dir, config.relations) == (None, None), name
        if name != "explain":
            assert config.questions == (list(STUDY) if name == "all" else [name]), name


def test_two_ddp_processes_learn_the_beta_one_process_learns(study, tiny_model_dir, tmp_path):
    """Two processes with half batches each average to the one-process full-batch gradient (equal halves)."""
    import subprocess
    import sys
    from dataclasses import asdict

    from lre_pl.experiments.beta_study.global_beta import collect_samples

    items = [(study.bundle, LAYER, study.known, study.splits)]
    samples = collect_samples(items, study.decoder.lm.tokenizer, "dev", "global")
    keep = len(samples.targets) // 2 * 2  # an even count: the two shards are equal, nothing is padded
    samples.projections, samples.biases = samples.projections[:keep], samples.biases[:keep]
    samples.targets, samples.groups = samples.targets[:keep], samples.groups[:keep]
    path = tmp_path / "samples.pt"
    torch.save(asdict(samples), path)
    script = Path(__file__).with_name("global_beta_ddp.py")
    learned = []
    for devices, batch in ((1, keep), (2, keep // 2)):
        result = subprocess.run(
            [sys.executable, str(script), tiny_model_dir, str(path), str(devices), str(batch)],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        [line] = [line for line in result.stdout.splitlines() if line.startswith("BETAS ")]
        learned.append(json.loads(line.removeprefix("BETAS ")))
    assert learned[1]["all"] == pytest.approx(learned[0]["all"], rel=1e-5)
    assert learned[0]["all"] != pytest.approx(1.0, abs=1e-3)


def test_hyper_parameters_held_fixed_across_trials(tiny_model_dir, tmp_path):
    from lre_pl.experiments.sweep.finished import chosen_points
    from lre_pl.protocol.rows import read_rows

    config = tiny_config(
        tiny_model_dir, tmp_path / "sweep", relations=["country capital city"], trials=[0, 1]
    )
    Sweep(config).run()
    [out] = run_beta_study(
        BetaStudyConfig(
            sweep_dirs=[str(tmp_path / "sweep")], questions=["across_trials", "global_beta"], fit_epochs=1
        )
    )
    # One relation: no half to hold out, so no held-out rows (this crashed with a traceback before).
    learned = {r["estimator"] for r in read_rows([out / "rows" / "global_beta.jsonl"])}
    assert "learned:global:dev" in learned and not any(name.startswith("heldout") for name in learned)
    rows = read_rows([out / "rows" / "across_trials.jsonl"])
    points = chosen_points(read_rows(sorted((tmp_path / "sweep" / "rows").glob("*.jsonl"))))
    layer, beta = points["country capital city", 0]
    [fixed] = [r for r in rows if r["trial"] == 1 and r["estimator"] == "fixed"]
    [own] = [r for r in rows if r["trial"] == 1 and r["estimator"] == "own"]
    assert (fixed["layer"], fixed["beta"]) == (str(layer), beta)
    assert (own["layer"], own["beta"]) == (
        str(points["country capital city", 1][0]),
        points["country capital city", 1][1],
    )
    # The fixed row by hand: trial 1's bundle read at trial 0's layer and beta, on trial 1's test split.
    study = StudyContext.of(
        Bundle.load(tmp_path / "sweep" / "bundles" / "country_capital_city" / "trial_1.pt"), config.grid(),
        Decoder(load_language_model(tiny_model_dir), config.top_k), layer,
    )  # fmt: skip
    i = study.bundle.layer_index(layer)
    hidden = relation_readout(study.bundle.test_states(layer)[study.known] @ study.bundle.weights[i].T,
                              study.bundle.biases[i], beta)  # fmt: skip
    expected = study.decoder.hits(hidden, study.objects)[study.splits["test"], 0].float().mean().item()
    assert fixed["value"] == pytest.approx(expected)
    assert "10. Hyper-parameters held fixed across trials" in (out / "beta_study.md").read_text()
    assert "± " in (out / "beta_study.md").read_text()


def test_the_studys_beta_chosen_on_dev_is_the_sweeps_own_choice(tiny_model_dir, tmp_path):
    """A sweep whose layer-search β (2.25) is off its grid and whose βs are listed out of order: on the
    tiny model every faithfulness ties, so only the tie rule decides, and the study must decide as the
    sweep did (the old report took β = 1, then the smallest)."""
    from lre_pl.experiments.beta_study.questions.base import selected_beta

    config = tiny_config(
        tiny_model_dir, tmp_path / "sweep", betas=[2.0, 0.5, 1.0], layer_search_beta=2.25, ranks=[]
    )
    Sweep(config).run()
    [out] = run_beta_study(BetaStudyConfig(sweep_dirs=[str(tmp_path / "sweep")], questions=["bias_variants"]))
    sweep_rows = read_rows(sorted((tmp_path / "sweep" / "rows").glob("*.jsonl")))
    chosen = {(r["relation"], r["trial"]): r["beta"] for r in sweep_rows if r["kind"] == "selected"
              and r["selection"] == "dev" and r["estimator"] == "lre" and r["metric"] == "faithfulness@1"}  # fmt: skip
    assert set(chosen.values()) == {2.25}  # ties: the sweep keeps its layer-search β
    study_rows = read_rows(sorted((out / "rows").rglob("*.jsonl")))
    selected = selected_beta(study_rows, "bias_variants", SelectionRule.of_sweep(json.loads(
        (tmp_path / "sweep" / "sweep_config.json").read_text())))  # fmt: skip
    assert {
        (r, t): v["chosen_beta"] for (r, t, variant), v in selected.items() if variant == "paper"
    } == chosen
    text = (out / "beta_study.md").read_text()
    assert "| paper | 2 | 0.000 | 0.000 | 2.25 [2.25–2.25] |" in text


def test_global_beta_decodes_a_grid_beta_once(study, swept, grid, tmp_path, monkeypatch):
    """A compared β of the sweep's grid is read from the per-β test decode the oracle rows made; only a
    β off the grid (a learned one, the paper's 2.25 off this grid) is decoded again."""
    from lre_pl.experiments.beta_study.questions import global_beta as question

    points = chosen_points(read_rows(sorted((swept / "rows").glob("*.jsonl"))))
    contexts = [StudyContext.of(Bundle.load(SweepFolder(swept).bundle(relation, trial)), grid,
                                study.decoder, layer) for (relation, trial), (layer, _) in sorted(points.items())]  # fmt: skip
    monkeypatch.setattr(
        question, "fit_betas", lambda model, samples, *_, **__: dict.fromkeys(samples.group_names, 1.7)
    )
    decoded, decode = [], StudyContext.test_faithfulness
    monkeypatch.setattr(
        StudyContext, "test_faithfulness", lambda self, beta, layer=None: decoded.append(beta) or decode(self, beta, layer)
    )  # fmt: skip
    rows = question.global_beta_rows(contexts, [points[key][1] for key in sorted(points)], "unused", tmp_path)
    # Per bundle: the paper's 2.25, and 1.7 for each of the 4 learned fits and, on the held-out half, the held-out fit.
    assert sorted(decoded) == [1.7] * 9 + [2.25] * 2
    compared = [row for row in rows if row["metric"] == "faithfulness@1"]
    # The tiny model's scores all tie: every grid choice (the sweep's, grid:*, oracle:*) is the layer-search β.
    assert {row["beta"] for row in compared} == {1.0, 1.7, 2.25} and len(compared) == 2 * 13 - 1
    for context in contexts:
        test = dict(zip(grid.betas, context.faithfulness_by_beta(grid.betas, "test")))
        on_grid = [r for r in compared if r["relation"] == context.bundle.relation and r["beta"] in test]
        assert on_grid and all(row["value"] == test[row["beta"]] for row in on_grid)


def test_the_registry_orders_the_questions_and_every_question_has_a_config():
    """A question is its class and its config: the names, the report's numbers (1, 2, ... in registry
    order), the per-bundle ones, and configs/beta/ follow the registry."""
    assert QUESTIONS[:10] == ("bias_variants", "where_beta", "unit_s", "per_sample_beta", "per_sample_w",
                              "after_norm", "residual", "fixed_beta", "global_beta", "across_trials")  # fmt: skip
    assert EXPLANATIONS == (
        "secant",
        "chord_causality",
        "secant_gain",
        "held_fixed",
        "subject_tokens",
        "in_context",
        "confidence",
    )
    # The questions that compute new Jacobians or products, which costly_relations restricts.
    assert [name for name in QUESTIONS if REGISTRY[name].costly] == [
        "secant",
        "chord_causality",
        "held_fixed",
        "subject_tokens",
        "in_context",
    ]
    assert all(REGISTRY[name].hypothesis and REGISTRY[name].prediction for name in EXPLANATIONS)
    numbers = [question.number for question in REGISTRY.values()]
    assert numbers[:10] == list(range(1, 11)) and numbers == sorted(set(numbers))
    assert PER_BUNDLE[:8] == ("bias_variants", "where_beta", "unit_s", "per_sample_beta", "per_sample_w",
                              "after_norm", "residual", "fixed_beta")  # fmt: skip
    assert all(REGISTRY[name].across_bundles for name in ("global_beta", "across_trials"))
    folder = Path(__file__).parents[2] / "configs" / "beta"
    assert {path.stem for path in folder.glob("*.yaml")} == {*QUESTIONS, "all", "explain"}
    headline = [line.order for question in REGISTRY.values() for line in question.headline]
    assert len(headline) == len(set(headline)) == 13


def test_costly_questions_run_on_costly_relations_only_and_others_on_every_relation(swept, tmp_path):
    assert REGISTRY["in_context"].costly and not REGISTRY["residual"].costly
    [out] = run_beta_study(
        BetaStudyConfig(sweep_dirs=[str(swept)], output_dir=str(tmp_path / "study"),
                        questions=["residual", "in_context"], costly_relations=["country capital city"])
    )  # fmt: skip
    rows = read_rows(sorted((out / "rows").rglob("*.jsonl")))
    assert {row["relation"] for row in rows if row["kind"] == "residual"} == set(RELATIONS)
    assert {row["relation"] for row in rows if row["kind"] == "in_context"} == {"country capital city"}
    with pytest.raises(InputError, match="unknown relation 'no such relation'"):
        BetaStudyConfig(sweep_dirs=[str(swept)], costly_relations=["no such relation"]).check()
