"""``lre-pl cross-relation`` on a tiny model's two-relation sweep: its files, its diagonal against the
sweep's own faithfulness, a readout decoded by hand, and bad input."""

import gzip
import signal
from pathlib import Path

import pytest
import torch
from test_sweep import RELATIONS, tiny_config

from lre_pl.dataset.relations import load_relation
from lre_pl.experiments.cross_relation.matrix import (
    BIAS_KIND,
    METRICS,
    SHARED_RECALL,
    TYPE_SHARE,
    object_vocabulary,
)
from lre_pl.experiments.sweep.finished import FinishedSweep
from lre_pl.experiments.sweep.runner import Sweep
from lre_pl.lightning.datamodule import object_token_id
from lre_pl.lm.models import load_language_model
from lre_pl.protocol.rows import read_rows


@pytest.fixture(scope="module")
def swept(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    Sweep(tiny_config(tiny_model_dir, folder), command="lre-pl sweep (test)").run()  # every test sample
    return folder


@pytest.fixture(scope="module")
def applied(swept, tmp_path_factory):
    """The command's output folder and results folder (run once, in process)."""
    from lre_pl.cli import main

    results, handler = tmp_path_factory.mktemp("results"), signal.getsignal(signal.SIGTERM)
    try:
        main(["cross-relation", "--sweep_dir", str(swept), "--results_dir", str(results)])
    finally:
        signal.signal(signal.SIGTERM, handler)
    return swept / "cross_relation", results


def test_the_command_writes_rows_report_and_figures(applied, tiny_model_dir):
    out, results = applied
    rows = read_rows([out / "rows.jsonl"])
    assert len(rows) == 2 * 2 * 3 + 2  # (r, r′) ordered pairs x metrics, and each r's control; one trial
    controls = [row for row in rows if row["kind"] == BIAS_KIND]
    assert sorted(row["relation"] for row in controls) == sorted(RELATIONS)
    rows = [row for row in rows if row["kind"] != BIAS_KIND]
    assert {(row["relation"], row["split"], row["metric"]) for row in rows} == {
        (r, other, metric) for r in RELATIONS for other in RELATIONS for metric in METRICS
    }
    assert len((out / "results.csv").read_text().splitlines()) == 1 + len(rows) + len(controls)
    for name in ("cross_relation.md", "type_share.png", "shared_subject_recall.png", "sweep_config.json"):
        assert (out / name).stat().st_size > 0, name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    report = (out / "cross_relation.md").read_text()
    assert "## Summary" in report and "**Type.**" in report and "**Families**" in report
    assert "**Bias alone.**" in report and "| b alone |" in report
    copied = results / Path(tiny_model_dir).name
    assert gzip.decompress((copied / "results.csv.gz").read_bytes()) == (out / "results.csv").read_bytes()
    assert (copied / "type_share.png").read_bytes() == (out / "type_share.png").read_bytes()


def test_the_diagonal_is_the_sweeps_faithfulness_and_a_readout_decodes_as_by_hand(
    applied, swept, tiny_model_dir
):
    out, _ = applied
    found = {(row["relation"], row["split"], row["metric"]): row for row in read_rows([out / "rows.jsonl"])}
    sweep = FinishedSweep.read(swept)
    grid = {
        (row["relation"], row["layer"], row["beta"]): row["value"]
        for row in read_rows(sweep.folder.row_files())
        if row["kind"] == "grid" and row["estimator"] == "lre" and row["split"] == "all"
        and row["metric"] == "faithfulness@1"
    }  # fmt: skip
    for relation in RELATIONS:  # no subject of these two has two objects: recall is faithfulness
        layer, beta = sweep.points[relation, 0]
        diagonal = found[relation, relation, SHARED_RECALL]
        assert diagonal["value"] == pytest.approx(grid[relation, str(layer), beta])
        assert diagonal["n"] == len(
            sweep.bundle(relation, 0).test_objects
        )  # known_only false: every test sample
    # r = the capital city read from the gender relation's subject states, decoded here by argmax
    lm = load_language_model(tiny_model_dir)
    r, other = RELATIONS
    reader, subjects = sweep.bundle(r, 0), sweep.bundle(other, 0)
    layer, beta = sweep.points[r, 0]
    with torch.no_grad():
        top = lm.decode(reader.operator(layer, beta)(subjects.test_states(layer))).argmax(-1)  # [m]
    relation = load_relation(r)
    head, _, tail = reader.test_prompt_template.rpartition("{}")  # the subject's slot is the last {}
    vocabulary = {object_token_id(lm.tokenizer, head + s.subject + tail, s.object) for s in relation.samples}
    assert set(reader.train_object_tokens.tolist()) <= vocabulary
    assert vocabulary == object_vocabulary(lm.tokenizer, reader.test_prompt_template, relation.samples)
    row = found[r, other, TYPE_SHARE]
    assert row["n"] == len(top) and row["value"] == pytest.approx(
        sum(t in vocabulary for t in top.tolist()) / len(top)
    )
    shared = found[r, other, SHARED_RECALL]
    assert shared["n"] == 0 and shared["value"] != shared["value"]  # countries and characteristics: NaN


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--sweep_dir", "no_such_folder"], "sweep_dir 'no_such_folder' is not a folder"),
        (["--relations", '["country capital city"]'], "has 1 evaluated relation(s)"),
        (["--relations", "[factual]"], "has 1 evaluated relation(s)"),  # the sweep's one factual relation
        (["--relations", '["country capital city", "country language"]'], "'country language' has no evaluated bundle"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(swept, run_cli, arguments, message):
    if arguments[0] != "--sweep_dir":
        arguments = ["--sweep_dir", str(swept), *arguments]
    code, error = run_cli("cross-relation", *arguments)
    assert code == 2 and error.count("\n") == 1 and message in error, error


def test_a_planted_operator_reads_its_one_object_from_every_subject(swept, tiny_model_dir, tmp_path, run_cli):
    """The capital city's LRE replaced by W = 0 and b a direction the LM decodes as one of its objects'
    first tokens t: every readout is t, so its type share is 1 on both relations' subjects and its recall
    on its own subjects is the share of objects that t starts."""
    import shutil

    from lre_pl.dataset.matching import is_prefix_match

    folder = tmp_path / "planted"
    shutil.copytree(swept, folder, ignore=shutil.ignore_patterns("cross_relation", "tensorboard"))
    sweep, lm = FinishedSweep.read(folder), load_language_model(tiny_model_dir)
    r, other = RELATIONS
    layer, _ = sweep.points[r, 0]
    bundle = sweep.bundle(r, 0)
    unembedding = lm.unembedding.weight.detach()
    vocabulary = object_vocabulary(lm.tokenizer, bundle.test_prompt_template, load_relation(r).samples)
    with torch.no_grad():
        decodes_as_itself = [
            t for t in sorted(vocabulary) if lm.decode(10 * unembedding[t][None]).argmax() == t
        ]

    def starts(t):
        return sum(is_prefix_match(lm.token_strings([t])[0], o) for o in bundle.test_objects)

    token = max(decodes_as_itself, key=starts)
    assert starts(token) > 0
    i = bundle.layer_index(layer)
    bundle.weights[i], bundle.biases[i] = 0, 10 * unembedding[token]
    bundle.save(sweep.folder.bundle(r, 0))
    code, error = run_cli("cross-relation", "--sweep_dir", str(folder), "--output_dir", str(tmp_path / "out"))
    assert code == 0, error
    found = {
        (row["relation"], row["split"], row["metric"]): row
        for row in read_rows([tmp_path / "out" / "rows.jsonl"])
    }
    assert found[r, r, TYPE_SHARE]["value"] == found[r, other, TYPE_SHARE]["value"] == 1.0
    assert found[r, r, SHARED_RECALL]["value"] == pytest.approx(starts(token) / len(bundle.test_objects))


def test_the_bias_alone_control_decodes_b_as_by_hand(applied, swept, tiny_model_dir):
    out, _ = applied
    controls = {row["relation"]: row for row in read_rows([out / "rows.jsonl"]) if row["kind"] == BIAS_KIND}
    sweep = FinishedSweep.read(swept)
    lm = load_language_model(tiny_model_dir)
    for relation in RELATIONS:
        layer, _ = sweep.points[relation, 0]
        bundle = sweep.bundle(relation, 0)
        b = bundle.biases[bundle.layer_index(layer)]  # decode(β W 0 + b) is decode(b)
        top = lm.decode(b).argmax().item()
        vocabulary = object_vocabulary(
            lm.tokenizer, bundle.test_prompt_template, load_relation(relation).samples
        )
        assert controls[relation]["value"] == float(top in vocabulary), relation
        assert controls[relation]["n"] == 1 and controls[relation]["split"] is None
