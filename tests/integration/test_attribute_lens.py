"""``lre-pl lens`` on a fit's run folder and on a sweep, and ``lre-pl distracted-lens`` on a tiny sweep,
against readouts recomputed by hand from whole-prompt forwards."""

import contextlib
import os
import re

import pytest
import torch
from test_sweep import RELATIONS, tiny_config

from lre_pl.dataset.matching import is_prefix_match
from lre_pl.dataset.relations import load_relation
from lre_pl.experiments.attribute_lens.distracted import choose_distractor
from lre_pl.experiments.attribute_lens.operators import lens_operators
from lre_pl.experiments.attribute_lens.run import DistractedLensConfig, run_distracted_lens
from lre_pl.experiments.sweep.finished import FinishedSweep
from lre_pl.experiments.sweep.runner import Sweep
from lre_pl.lm.hooks import capture
from lre_pl.lm.models import load_language_model
from lre_pl.protocol.folder import LensFolder
from lre_pl.protocol.rows import read_rows

TEXT = "Rome is lovely. The capital city of France is"


@contextlib.contextmanager
def working_directory(path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def fit_run(tiny_args, tmp_path_factory):
    """A fit of blocks 0 and 1 on the tiny model (in this process): its run folder."""
    from lre_pl.cli import main

    folder = tmp_path_factory.mktemp("fit")
    with working_directory(folder):
        main(["fit", *tiny_args, "--model.layers", "[0, 1]", "--trainer.enable_progress_bar", "false"])
    return folder / "lightning_logs" / "version_0"


@pytest.fixture(scope="module")
def swept(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    Sweep(tiny_config(tiny_model_dir, folder, ranks=[]), command="lre-pl sweep (test)").run()
    return folder


def test_lens_on_a_fit_prints_the_table_and_writes_the_picture(fit_run, tmp_path, capsys):
    import lre_pl
    from lre_pl.cli import main

    with working_directory(tmp_path):
        main(["lens", "--operators", str(fit_run), "--prompt", TEXT, "--top_k", "2", "--output_dir", "out"])
    printed = capsys.readouterr().out.splitlines()
    view = lre_pl.attribute_lens(fit_run, TEXT, k=2)
    assert view.layers == [0, 1]
    table = view.table().splitlines()
    assert printed[: len(table)] == table and len(table) == 2 + 2 * 2
    assert table[0].startswith("attribute lens: 'country capital city' on ")
    assert (tmp_path / "out" / "lens_0.png").stat().st_size > 0
    assert list((tmp_path / "out" / "tensorboard").glob("events.out.tfevents.*"))
    operators = lens_operators(fit_run)
    assert sorted(operators) == [0, 1] and all(
        op.relation == "country capital city" for op in operators.values()
    )
    (single,) = lens_operators(fit_run / "operator.pt").values()  # one operator file: its own layer
    torch.testing.assert_close(single.weight, operators[single.layer].weight)
    alone = tmp_path / "run_with_one_operator"
    alone.mkdir()
    (alone / "operator.pt").write_bytes((fit_run / "operator.pt").read_bytes())  # a fit of one layer
    assert list(lens_operators(alone)) == [single.layer]


def test_lens_reads_a_sweeps_bundle_at_its_dev_chosen_beta(swept):
    sweep = FinishedSweep.read(swept)
    layer, beta = sweep.points["country capital city", 0]
    operators = lens_operators(swept, "country capital city")
    bundle = sweep.bundle("country capital city", 0)
    assert list(operators) == bundle.layers and {op.beta for op in operators.values()} == {beta}
    torch.testing.assert_close(operators[layer].weight, bundle.weights[bundle.layer_index(layer)])


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--prompt", TEXT], "no operators: give --operators"),
        (["--operators", "{run}"], "no prompt"),
        (["--operators", "{run}", "--prompt", '["France", " "]'], "prompt 2 of 2 is empty"),
        (["--operators", "missing", "--prompt", TEXT], "operators 'missing' does not exist"),
        (["--operators", "{sweep}", "--prompt", TEXT], "is a sweep folder: name the relation"),
        (
            ["--operators", "{sweep}", "--relation", "fruit inside color", "--prompt", TEXT],
            "has no evaluated bundle",
        ),
        (
            ["--operators", "{run}", "--prompt", TEXT, "--positions", "subject"],
            "--positions subject needs --subject",
        ),
        (
            ["--operators", "{run}", "--prompt", TEXT, "--positions", "subject", "--subject", "Spain"],
            "'Spain' is not in",
        ),
    ],
)
def test_lens_bad_input_is_one_line(arguments, message, fit_run, swept, run_cli, tmp_path):
    arguments = [a.format(run=fit_run, sweep=swept) for a in arguments]
    code, err = run_cli("lens", *arguments, "--output_dir", "out")
    errors = [
        line for line in err.splitlines() if line.startswith("lre-pl: error:")
    ]  # (a model load's bar aside)
    assert code == 2 and len(errors) == 1 and message in errors[0], err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def distracted(swept, tmp_path_factory):
    out = tmp_path_factory.mktemp("lens")
    conclusion = out / "conclusion.md"
    conclusion.write_text("The lens reads what the LM was told to forget.\n")
    config = DistractedLensConfig(
        sweep_dirs=[str(swept)], relations=RELATIONS, output_dir=str(out), report=str(out / "docs" / "lens.md"),
        results_dir=str(out / "results"), examples=2, conclusion=str(conclusion),
    )  # fmt: skip
    (folder,) = run_distracted_lens(config, command="lre-pl distracted-lens (test)")
    return config, folder


def by_hand(lm, bundle, layer, beta, template, seed=0):
    """Each evaluated sample's (LM, lens, logit lens) top-1 tokens on its repetition-distracted prompt, from
    one whole-prompt forward each (no shared prefix, no batching)."""
    relation = load_relation(bundle.relation)
    operator = bundle.operator(layer, beta)
    module = {layer: lm.layer_module(layer)}
    tokens = []
    for subject, obj in zip(bundle.test_subjects, bundle.test_objects):
        distractor = choose_distractor(relation, subject, obj, seed)
        statement = relation.prompt_templates[0].replace("{}", subject) + " " + distractor
        query = relation.prompt_templates[0].replace("{}", subject)
        text = template.replace("{false}", statement).replace("{query}", query)
        encoding = lm.tokenizer(text, return_offsets_mapping=True)
        last = text.rindex(subject) + len(subject) - 1
        position = max(i for i, (a, b) in enumerate(encoding["offset_mapping"]) if a <= last < b)
        with torch.no_grad(), capture(module, lambda _, hidden, at=position: hidden[0, at]) as state:
            logits = lm.model(input_ids=torch.tensor([encoding["input_ids"]])).logits[0, -1]
        h = state[layer]
        top = [lm.decode(operator(h)).argmax(), lm.decode(h).argmax()]
        tokens.append((obj, distractor, *lm.token_strings([logits.argmax(), *top])))
    return tokens


def test_distracted_rows_match_whole_prompt_forwards(distracted, swept, tiny_model_dir):
    config, folder = distracted
    rows = read_rows(LensFolder(folder).row_files())
    assert len(rows) == len(RELATIONS) * 3 * 3 * 2  # prompt kinds x readers x targets
    sweep = FinishedSweep.read(swept)
    lm = load_language_model(tiny_model_dir)
    relation = "country capital city"
    layer, beta = sweep.points[relation, 0]
    tokens = by_hand(lm, sweep.bundle(relation, 0), layer, beta, config.templates["repetition"])
    mine = {
        (row["estimator"], row["metric"]): row
        for row in rows
        if row["relation"] == relation and row["kind"] == "attribute_lens:repetition"
    }
    for index, reader in enumerate(("lm", "lre", "logit_lens")):
        for target, column in (("object", 0), ("distractor", 1)):
            expected = sum(is_prefix_match(t[2 + index], t[column]) for t in tokens) / len(tokens)
            row = mine[reader, f"recall@1 {target}"]
            assert row["value"] == pytest.approx(expected), (reader, target)
            assert row["n"] == len(tokens) and row["layer"] == str(layer) and row["beta"] == beta


def test_distracted_report_tables_figures_and_results(distracted):
    config, folder = distracted
    report = (folder / "attribute_lens.md").read_text()
    assert "Made by" in report and "lre-pl distracted-lens (test)" in report
    assert re.search(r"\| repetition \| 2 \| \d+ \|", report) and re.search(
        r"\| instruction \| 2 \| \d+ \|", report
    )
    # by kind; by category (2 categories); by relation (2); the examples (2 samples of each relation)
    assert report.count("| undistracted |") == 1 + 2 + 2 + 2 * 2
    model_report = (folder.parent / "docs" / "lens.md").read_text()
    assert model_report.startswith("# The attribute lens on distracted prompts")
    assert model_report.endswith("## In plain words\n\nThe lens reads what the LM was told to forget.\n")
    assert "In plain words" not in report  # the per-model report has no conclusion
    results = list((folder.parent / "results").glob("*/results.csv.gz"))
    assert len(results) == 1 and (results[0].parent / "attribute_lens.md").exists()
    assert list(results[0].parent.glob("attribute_lens_*.png"))
    before = {path: path.stat().st_mtime_ns for path in LensFolder(folder).row_files()}
    run_distracted_lens(config)  # resumes: every bundle is done
    assert {path: path.stat().st_mtime_ns for path in LensFolder(folder).row_files()} == before


@pytest.mark.parametrize(
    "override, message",
    [
        ({"templates": {"mine": "{query} {false}"}}, "must end with {query}"),
        ({"relations": ["no such relation"]}, "no such relation"),
        ({"sweep_dirs": ["{out}"]}, "holds no sweep_config.json"),
        ({"templates": {"undistracted": "{query}"}}, "the reference prompt's name"),
        ({"conclusion": "missing.md"}, "conclusion='missing.md' is not a file"),
    ],
)
def test_distracted_bad_config_is_one_line(override, message, swept, tmp_path):
    from lre_pl.errors import InputError

    override = {
        k: [v.format(out=tmp_path) for v in value] if k == "sweep_dirs" else value
        for k, value in override.items()
    }
    config = DistractedLensConfig(
        **{"sweep_dirs": [str(swept)], "output_dir": str(tmp_path / "o"), **override}
    )
    with pytest.raises(InputError, match=re.escape(message)):
        run_distracted_lens(config)
    assert not (tmp_path / "o").exists()
