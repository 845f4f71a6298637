"""lre-pl sweep on a tiny model: bundles, evaluation rows, resume, DDP, report, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lre_pl.dataset.matching import is_prefix_match
from lre_pl.errors import InputError
from lre_pl.experiments.sweep.runner import Sweep, SweepConfig
from lre_pl.lm.models import load_language_model
from lre_pl.lre.bundle import Bundle
from lre_pl.lre.estimators import TrainingStatistics
from lre_pl.lre.operator import relation_readout
from lre_pl.protocol.rows import read_rows
from lre_pl.protocol.splits import split_known

ROOT = Path(__file__).parents[2]
RELATIONS = ["country capital city", "characteristic gender"]


def tiny_config(model_dir: str, folder: Path, **overrides) -> SweepConfig:
    """Every test sample evaluated (a random tiny model knows none), a small grid."""
    options = dict(
        model=model_dir, relations=RELATIONS, trials=[0], betas=[0.5, 1.0, 2.0], ranks=[4, 32],
        known_only=False, batch_size=4, chunk_size=11, output_dir=str(folder),
        trainer={"accelerator": "cpu", "enable_progress_bar": False},
    )  # fmt: skip
    return SweepConfig(**{**options, **overrides})


def rows_of(folder: Path) -> dict[str, list[dict]]:
    return {path.name: read_rows([path]) for path in sorted((folder / "rows").glob("*.jsonl"))}


@pytest.fixture(scope="module")
def swept(tiny_model_dir, tmp_path_factory):
    """One uninterrupted sweep of the two relations."""
    folder = tmp_path_factory.mktemp("sweep")
    Sweep(tiny_config(tiny_model_dir, folder), command="lre-pl sweep (test)").run()
    return folder


def test_a_sweep_writes_bundles_rows_summary_and_figures(swept):
    for name in ("results.csv", "summary.md", "command.txt", "sweep_config.json", "efficacy_vs_faithfulness.png",
                 "faithfulness_by_layer.png", "faithfulness_by_beta.png"):  # fmt: skip
        assert (swept / name).stat().st_size > 0, name
    assert not list(swept.rglob("*.partial"))
    rows = rows_of(swept)
    assert sorted(rows) == ["characteristic_gender__trial_0.jsonl", "country_capital_city__trial_0.jsonl"]
    summary = (swept / "summary.md").read_text()
    assert "| factual | 1 | " in summary and "| bias | 1 | " in summary
    estimators = {row["estimator"] for row in rows["country_capital_city__trial_0.jsonl"]}
    assert {
        "lre",
        "lre_emb",
        "translation",
        "linear_regression",
        "identity",
        "edit:target_output",
    } <= estimators
    assert len((swept / "results.csv").read_text().splitlines()) == 1 + sum(map(len, rows.values()))


def test_bundle_holds_the_fit_estimate_and_consistent_statistics(swept, tiny_model_dir, tmp_path):
    """W of the bundle = the W of an independent `fit` of that layer; J_i s_i = o_i - b_i; states of every layer."""
    from fit_tiny import run

    bundle = Bundle.load(swept / "bundles" / "country_capital_city" / "trial_0.pt")
    lm = load_language_model(tiny_model_dir)
    assert bundle.layers == lm.layer_names() == bundle.state_layers
    n, layers, d = bundle.train_subject_states.shape
    assert (n, layers, d) == (5, lm.num_blocks + 1, lm.hidden_size)
    assert bundle.test_subject_states.shape == (len(bundle.test_objects), layers, d)
    torch.testing.assert_close(
        bundle.train_jacobian_states, bundle.train_output_states[:, None] - bundle.train_biases
    )
    torch.testing.assert_close(bundle.biases, bundle.train_biases.mean(0), atol=1e-6, rtol=1e-5)
    module = run(tiny_model_dir, str(tmp_path), devices=1, layers=[1])
    torch.testing.assert_close(
        bundle.weights[bundle.layer_index(1)], module.weights[0].cpu(), atol=1e-6, rtol=1e-5
    )
    assert bundle.weights[bundle.layer_index(1)].abs().max() > 0
    assert set(bundle.seconds) == {"knowns", "jacobians"}


def test_selected_rows_are_the_dev_argmax_reported_on_test(swept, tiny_model_dir):
    """Recompute the LRE's choice from the bundle alone: layer at beta 1 on dev, then beta, then test."""
    bundle = Bundle.load(swept / "bundles" / "country_capital_city" / "trial_0.pt")
    lm = load_language_model(tiny_model_dir)
    splits = split_known(len(bundle.test_objects), 0.5, seed=0)
    assert len(splits["dev"]) + len(splits["test"]) == len(bundle.test_objects)
    assert not set(splits["dev"].tolist()) & set(splits["test"].tolist())

    def hits(layer, beta) -> torch.Tensor:  # top-1 hits of every test sample, decoded independently
        i = bundle.layer_index(layer)
        hidden = relation_readout(bundle.test_states(layer) @ bundle.weights[i].T, bundle.biases[i], beta)
        tokens = lm.token_strings(lm.decode(hidden).argmax(-1))
        return torch.tensor(
            [is_prefix_match(t, o) for t, o in zip(tokens, bundle.test_objects)], dtype=torch.float
        )

    dev, test = splits["dev"], splits["test"]
    layer = max(bundle.layers, key=lambda layer: hits(layer, 1.0)[dev].mean().item())
    beta = max([1.0, 0.5, 2.0], key=lambda beta: hits(layer, beta)[dev].mean().item())
    rows = rows_of(swept)["country_capital_city__trial_0.jsonl"]
    (selected,) = [r for r in rows if r["kind"] == "selected" and r["estimator"] == "lre"
                   and r["selection"] == "dev" and r["metric"] == "faithfulness@1"]  # fmt: skip
    assert (selected["layer"], selected["beta"], selected["split"]) == (str(layer), beta, "test")
    assert selected["value"] == pytest.approx(hits(layer, beta)[test].mean().item())
    assert selected["n"] == len(test)
    grid = {(r["layer"], r["beta"]) for r in rows if r["kind"] == "grid" and r["estimator"] == "lre"}
    assert {(str(x), 1.0) for x in bundle.layers} <= grid and (str(layer), 2.0) in grid


def test_baseline_rows_decode_their_closed_form(swept, tiny_model_dir):
    """translation at its chosen layer: decode(s + mean(o - s)) of the test split, recomputed by hand."""
    bundle = Bundle.load(swept / "bundles" / "characteristic_gender" / "trial_0.pt")
    lm = load_language_model(tiny_model_dir)
    rows = rows_of(swept)["characteristic_gender__trial_0.jsonl"]
    (selected,) = [r for r in rows if r["kind"] == "selected" and r["estimator"] == "translation"
                   and r["selection"] == "dev" and r["metric"] == "faithfulness@1"]  # fmt: skip
    layer = "emb" if selected["layer"] == "emb" else int(selected["layer"])
    i = bundle.layer_index(layer)
    statistics = TrainingStatistics(bundle.train_subject_states[:, i], bundle.train_output_states)
    offset = (statistics.output_states - statistics.subject_states).mean(0)
    tokens = lm.token_strings(lm.decode(bundle.test_states(layer) + offset).argmax(-1))
    test = split_known(len(bundle.test_objects), 0.5, seed=0)["test"].tolist()
    expected = sum(is_prefix_match(tokens[k], bundle.test_objects[k]) for k in test) / len(test)
    assert selected["value"] == pytest.approx(expected)


def test_an_interrupted_sweep_resumes_with_nothing_lost_or_repeated(
    swept, tiny_model_dir, tmp_path, monkeypatch
):
    calls = {"estimate": [], "evaluate": []}
    original_estimate, original_evaluate = Sweep.estimate, Sweep.evaluate

    def estimate(self, relation, seed):
        calls["estimate"].append(relation)
        return original_estimate(self, relation, seed)

    def evaluate(self, relation, seed):
        calls["evaluate"].append(relation)
        if relation == RELATIONS[1] and len(calls["evaluate"]) == 2:
            raise KeyboardInterrupt  # Ctrl-C after the second bundle, before its rows
        return original_evaluate(self, relation, seed)

    monkeypatch.setattr(Sweep, "estimate", estimate)
    monkeypatch.setattr(Sweep, "evaluate", evaluate)
    config = tiny_config(tiny_model_dir, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        Sweep(config).run()
    assert sorted(rows_of(tmp_path)) == ["country_capital_city__trial_0.jsonl"]
    assert not (tmp_path / "summary.md").exists()
    Sweep(config).run()  # the same command again
    assert calls["estimate"] == RELATIONS  # each bundle estimated once
    assert calls["evaluate"] == [RELATIONS[0], RELATIONS[1], RELATIONS[1]]
    resumed, uninterrupted = rows_of(tmp_path), rows_of(swept)
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        strip = lambda rows: [{k: v for k, v in r.items() if k != "value"} | {"value": round(r["value"], 6)}
                              for r in rows if r["kind"] != "timing"]  # fmt: skip
        assert strip(resumed[name]) == strip(uninterrupted[name]), name


def test_a_partial_bundle_is_not_taken_for_a_finished_one(swept, tiny_model_dir, tmp_path):
    """A crash mid-write leaves only a .partial file: the rerun estimates that bundle again."""
    folder = tmp_path / "s"
    bundle = folder / "bundles" / "country_capital_city" / "trial_0.pt.partial"
    bundle.parent.mkdir(parents=True)
    bundle.write_bytes(b"truncated")
    Sweep(tiny_config(tiny_model_dir, folder, relations=RELATIONS[:1])).run()
    assert (folder / "bundles" / "country_capital_city" / "trial_0.pt").exists()
    assert len(rows_of(folder)) == 1


def sweep_in_two_processes(
    tiny_model_dir: str, folder: Path, spread: str, env: dict | None = None
) -> subprocess.CompletedProcess:
    """The CLI's sweep of the swept fixture's config with ``trainer: {strategy: ddp, devices: 2}`` (through
    sweep_spy.py, which logs who did what to ``folder.spy``)."""
    return subprocess.run(
        [sys.executable, str(Path(__file__).with_name("sweep_spy.py")), "sweep", "--model", tiny_model_dir,
         "--relations", json.dumps(RELATIONS), "--trials", "[0]", "--betas", "[0.5, 1.0, 2.0]", "--ranks", "[4, 32]",
         "--known_only", "false", "--batch_size", "4", "--chunk_size", "11", "--output_dir", str(folder),
         "--spread", spread,
         "--trainer", json.dumps({"accelerator": "cpu", "strategy": "ddp", "devices": 2,
                                  "enable_progress_bar": False})],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "SWEEP_SPY_LOG": str(folder.with_suffix(".spy")), **(env or {})},
    )  # fmt: skip


def spied(folder: Path) -> list[dict]:
    return [json.loads(line) for line in folder.with_suffix(".spy").read_text().splitlines()]


def assert_same_sweep(one: Path, two: Path) -> None:
    """The bundles and the non-timing rows of two sweep folders are equal (to float tolerance)."""
    for relation in ("country_capital_city", "characteristic_gender"):
        first = Bundle.load(one / "bundles" / relation / "trial_0.pt")
        second = Bundle.load(two / "bundles" / relation / "trial_0.pt")
        for name in ("weights", "biases", "train_subject_states", "train_biases", "test_subject_states",
                     "test_output_states"):  # fmt: skip
            torch.testing.assert_close(getattr(second, name), getattr(first, name), atol=1e-6, rtol=1e-5)
        assert second.test_objects == first.test_objects
        assert second.test_lm_predictions == first.test_lm_predictions
    one_rows, two_rows = rows_of(one), rows_of(two)
    assert one_rows.keys() == two_rows.keys()
    for name in one_rows:
        key = lambda r: (r["kind"], r["selection"], r["estimator"], r["layer"], r["beta"], r["rank"], r["split"],
                         r["metric"])  # fmt: skip  # noqa: E731
        one_values = {key(r): r["value"] for r in one_rows[name] if r["kind"] != "timing"}
        two_values = {key(r): r["value"] for r in two_rows[name] if r["kind"] != "timing"}
        assert one_values.keys() == two_values.keys()
        assert all(two_values[k] == pytest.approx(v, abs=1e-6) for k, v in one_values.items()), name


def test_two_ddp_processes_sweep_what_one_process_does(swept, tiny_model_dir, tmp_path):
    """spread: prompts: one DDP fit per task, its prompts sharded, evaluation on rank 0."""
    result = sweep_in_two_processes(tiny_model_dir, tmp_path / "sweep", "prompts")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_sweep(swept, tmp_path / "sweep")
    assert {line["rank"] for line in spied(tmp_path / "sweep") if line["stage"] == "evaluate"} == {0}


def test_two_processes_taking_whole_tasks_sweep_what_one_process_does(swept, tiny_model_dir, tmp_path):
    """spread: tasks: each process takes whole tasks (each task once, both processes busy: two tasks,
    two processes), with Lightning's rank-zero rank its own after its one-device fit."""
    folder = tmp_path / "sweep"
    result = sweep_in_two_processes(tiny_model_dir, folder, "tasks")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_sweep(swept, folder)
    lines = spied(folder)
    for stage in ("estimate", "evaluate"):
        done = sorted((line["task"][0], line["rank"]) for line in lines if line["stage"] == stage)
        assert [relation for relation, _ in done] == sorted(RELATIONS), stage  # each task once
        assert {rank for _, rank in done} == {0, 1}, stage
    assert all(line["rank_zero_only"] == line["rank"] for line in lines)
    assert not (folder / "claims").exists()
    assert (folder / "summary.md").exists() and "| bias | 1 | " in (folder / "summary.md").read_text()


def test_a_failing_process_fails_the_command_with_its_error(tiny_model_dir, tmp_path):
    """Rank 1 fails in its evaluation: the command fails with rank 1's message; its task has no rows file,
    no report is written, and a rerun (the claims of the dead run dropped) finishes the sweep."""
    folder = tmp_path / "sweep"
    result = sweep_in_two_processes(tiny_model_dir, folder, "tasks", env={"SWEEP_SPY_FAIL_RANK": "1"})
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lre-pl: error: sweep process 1 (pid ") and last.endswith(
        "failed with exit code 1: RuntimeError: injected failure in the evaluation of "
        + next(line["task"][0] for line in spied(folder) if line["rank"] == 1)
    ), last
    failed = next(line["task"] for line in spied(folder) if line["rank"] == 1)
    assert not (folder / "rows" / f"{failed[0].replace(' ', '_')}__trial_0.jsonl").exists()
    assert not (folder / "summary.md").exists()
    assert list((folder / "claims").iterdir())  # left by the dead run
    result = sweep_in_two_processes(tiny_model_dir, folder, "tasks")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(rows_of(folder)) == [
        "characteristic_gender__trial_0.jsonl",
        "country_capital_city__trial_0.jsonl",
    ]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--relations", "[no such relation]"], "unknown relation 'no such relation'"),
        (["--dev_fraction", "1.5"], "dev_fraction=1.5 must be between 0 and 1"),
        (["--estimators", "[lre, ridge]"], "unknown estimator 'ridge'"),
        (["--estimators", "[translation]"], "must include lre"),
        (["--min_known", "1"], "min_known=1 must be at least 2"),
        (["--trials", "[0, 0]"], "trials=[0, 0] must be distinct seeds"),
        (["--layers", "[emb, 7]"], "layer 7 is out of range"),
        (["--ranks", "[4, 33]"], "ranks=[4, 33] out of range"),
        (["--betas", "[]"], "betas=[] must be a non-empty list"),
        (["--spread", "relations"], "spread='relations': give tasks (whole tasks per process) or prompts"),
        (["--edit_targets", "all"], "edit_targets='all': give known (the paper's targets) or relation"),
        (["--stop_after_hours", "0"], "stop_after_hours=0.0 must be positive"),
    ],
)
def test_bad_sweep_input_fails_in_one_line_before_any_work(
    run_cli, tiny_model_dir, tmp_path, arguments, message
):
    folder = tmp_path / "sweep"
    code, stderr = run_cli("sweep", "--model", tiny_model_dir, "--output_dir", str(folder), *arguments)
    assert code == 2, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("lre-pl: error: ") and message in lines[-1], lines[-1]
    assert not folder.exists()  # refused before anything is written: the folder is not locked by it


def test_a_folder_takes_more_relations_and_trials_but_not_another_grid(swept, tiny_model_dir):
    """A rerun into a swept folder may add relations or trials (its commands are kept, in order); a
    different grid, model or split would mix incomparable rows and is refused before any work."""
    rows_before = rows_of(swept)
    with pytest.raises(InputError, match=r"was swept with betas=\[0.5, 1.0, 2.0\], not \[1.0, 2.0\]: rerun"):
        Sweep(tiny_config(tiny_model_dir, swept, betas=[1.0, 2.0]))
    with pytest.raises(InputError, match="was swept with dev_fraction=0.5, not 0.25"):
        Sweep(tiny_config(tiny_model_dir, swept, dev_fraction=0.25))
    Sweep(
        tiny_config(tiny_model_dir, swept, relations=RELATIONS[:1], batch_size=2), command="(narrower)"
    ).run()
    assert (swept / "command.txt").read_text() == "lre-pl sweep (test)\n(narrower)\n"
    assert rows_of(swept) == rows_before  # nothing redone: both bundles had rows
    assert "| bias | 1 | " in (swept / "summary.md").read_text()  # the folder's report: both relations
    # A folder swept before a field existed was swept with its default: it resumes, and refuses another.
    written = json.loads((swept / "sweep_config.json").read_text())
    (swept / "sweep_config.json").write_text(
        json.dumps({k: v for k, v in written.items() if k != "edit_targets"})
    )
    Sweep(tiny_config(tiny_model_dir, swept), command="lre-pl sweep (test)").check_folder()
    with pytest.raises(InputError, match="was swept with edit_targets='known', not 'relation'"):
        Sweep(tiny_config(tiny_model_dir, swept, edit_targets="relation")).check_folder()


@pytest.mark.parametrize("name", ["smollm2.yaml", "smollm2_beta.yaml", "gemma3.yaml", "gemma3_full.yaml"])
def test_shipped_sweep_configs_are_valid(name):
    import yaml

    config = SweepConfig(**yaml.safe_load((ROOT / "configs" / "sweep" / name).read_text()))
    assert len(config.check()) == 47 and config.betas[0] == 0.0 and config.betas[-1] == 5.0


def test_kept_jacobians_are_the_per_sample_statistics(tiny_model_dir, tmp_path):
    Sweep(tiny_config(tiny_model_dir, tmp_path, relations=RELATIONS[:1], keep_jacobians=True)).run()
    bundle = Bundle.load(tmp_path / "bundles" / "country_capital_city" / "trial_0.pt")
    n, layers, d = bundle.train_subject_states.shape
    assert bundle.train_jacobians.shape == (n, layers, d, d)
    torch.testing.assert_close(
        torch.einsum("nlij,nlj->nli", bundle.train_jacobians, bundle.train_subject_states),
        bundle.train_jacobian_states, atol=1e-5, rtol=1e-4,
    )  # fmt: skip
    torch.testing.assert_close(bundle.weights, bundle.train_jacobians.mean(0), atol=1e-6, rtol=1e-5)


def one_object_relation(folder: Path) -> str:
    """characteristic gender with every object "men": no sample has a target with another object."""
    relation = json.loads((ROOT / "lre_pl/resources/relations/bias/characteristic_gender.json").read_text())
    relation["name"] = "one object"
    relation["samples"] = [{**sample, "object": "men"} for sample in relation["samples"]]
    path = folder / "one_object.json"
    path.write_text(json.dumps(relation))
    return str(path)


@pytest.mark.parametrize(
    ("targets", "reason"),
    [("known", "no target: every known sample has the same object"),
     ("relation", "no target: every test sample of the relation has the same object")],
)  # fmt: skip
def test_a_relation_without_edit_targets_says_so_in_its_rows_and_summary(
    tiny_model_dir, tmp_path, targets, reason
):
    relation = one_object_relation(tmp_path)
    config = tiny_config(
        tiny_model_dir, tmp_path / "sweep", relations=[relation, "country capital city"], layers=[1],
        edit_targets=targets,
    )  # fmt: skip
    Sweep(config).run()
    rows = rows_of(tmp_path / "sweep")
    mine, other = rows["one_object__trial_0.jsonl"], rows["country_capital_city__trial_0.jsonl"]
    code = "no_edit_target" if targets == "known" else "no_edit_target_in_relation"
    assert [row["metric"] for row in mine if row["kind"] == "count"][-1] == code
    assert not [row for row in mine if row["metric"].startswith("efficacy")]
    metric = "efficacy" if targets == "known" else "efficacy_relation_targets"
    assert {row["metric"] for row in other if row["metric"].startswith("efficacy")} == {metric}
    summary = (tmp_path / "sweep" / "summary.md").read_text()
    assert "| one object | bias |" in summary and "– (no target) | – |" in summary
    assert f"- one object (bias), trial 0: {metric}: {reason}" in summary
    assert "(0 of 2 tasks): none" in summary


def test_a_sweep_stopped_by_its_time_limit_reports_what_is_done_and_names_the_rest(
    tiny_model_dir, tmp_path, monkeypatch
):
    from lre_pl.experiments.sweep import runner

    checks = []
    monkeypatch.setattr(runner.Deadline, "passed", lambda self: checks.append(1) or len(checks) > 1)
    folder = tmp_path / "sweep"
    Sweep(tiny_config(tiny_model_dir, folder, layers=[1], stop_after_hours=1.0)).run()
    assert sorted(rows_of(folder)) == ["country_capital_city__trial_0.jsonl"]
    summary = (folder / "summary.md").read_text()
    assert "**listed but not in the folder** (1 of 2 tasks): characteristic gender trial 0" in summary
    monkeypatch.undo()
    Sweep(tiny_config(tiny_model_dir, folder, layers=[1])).run()  # the rerun resumes and finishes
    assert len(rows_of(folder)) == 2
    assert "(0 of 2 tasks): none" in (folder / "summary.md").read_text()
