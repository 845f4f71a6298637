"""The commands added after ``sweep`` (``lens``, ``predict``, ``beta-study``, ``distracted-lens``,
``cross-relation``) fail as cleanly as it does: bad input is one line before the model loads and leaves
nothing, SIGINT and SIGTERM are one true line with exit code 130 and 143, a second run into a folder in
use is refused at once (issue 26, items 8 and 10-16)."""

# ruff: noqa: F811 (the fixtures fit_run and swept, a tiny fit and sweep, are test_attribute_lens's)

import importlib.metadata
import json
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import start_held_in
from test_attribute_lens import fit_run, swept  # noqa: F401
from test_sweep import RELATIONS, tiny_config

from lre_pl.experiments.sweep.runner import Sweep
from lre_pl.lm.models import load_language_model
from lre_pl.lre.operator import LinearRelationOperator
from lre_pl.protocol.rows import read_rows

TEXT = "The capital city of France is"


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: what these cases check must be checked before it. Every lre_pl
    module is imported first, so that none binds the stand-in for the tests after this one."""
    import importlib
    import pkgutil

    import lre_pl

    for module in pkgutil.walk_packages(lre_pl.__path__, "lre_pl."):
        importlib.import_module(module.name)

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("lre_pl.lm.models.load_language_model", loaded)
    monkeypatch.setattr("lre_pl.experiments.sweep.finished.FinishedSweep.load_model", loaded)


def one_line(code, stderr, line):
    """The run failed with bad input: exit code 2 and exactly ``line``, the only error line, no traceback."""
    errors = [text for text in stderr.splitlines() if text.startswith("lre-pl: error:")]
    assert (code, errors) == (2, [f"lre-pl: error: {line}"]), stderr[-2000:]
    assert "Traceback" not in stderr


# ------------------------------------------------------------------------------------------ item 10
def test_a_sweep_of_one_beta_finishes(tiny_model_dir, tmp_path):
    folder = tmp_path / "sweep"
    config = tiny_config(tiny_model_dir, folder, relations=RELATIONS[:1], betas=[1.0], ranks=[])
    assert Sweep(config).run() == folder
    rows = read_rows(sorted((folder / "rows").glob("*.jsonl")))
    chosen = [row["beta"] for row in rows if row["kind"] == "selected" and row["estimator"] == "lre"]
    assert chosen and set(chosen) == {1.0}
    assert (folder / "summary.md").stat().st_size > 0


# ------------------------------------------------------------------------------------------ item 11
@pytest.mark.parametrize(
    ("command", "flags", "option"),
    [
        ("distracted-lens", ["--relations", "[adjective antonym]"], "relations"),
        ("beta-study", ["--questions", "[residual]", "--relations", "[adjective antonym]"], "relations"),
        ("beta-study", ["--questions", "[in_context]", "--costly_relations", "[adjective antonym]"], "costly_relations"),
    ],
)  # fmt: skip
def test_relations_the_sweep_lacks_are_refused_before_the_model_loads(
    run_cli, no_model, swept, tmp_path, command, flags, option
):
    trial = " of trial 0" if command == "distracted-lens" else ""
    code, stderr = run_cli(command, "--sweep_dirs", f"[{swept}]", "--output_dir", "out", *flags)
    one_line(
        code, stderr,
        f"{option}=['adjective antonym']: the sweep in {swept} has no evaluated bundle{trial} of adjective "
        "antonym; it has characteristic gender, country capital city: choose among those, or sweep them first",
    )  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_a_relation_the_sweep_lacks_beside_others_is_a_warning_and_named_in_the_report(
    run_cli, swept, tmp_path
):
    relations = '["country capital city", "adjective antonym"]'
    code, stderr = run_cli(
        "beta-study", "--sweep_dirs", f"[{swept}]", "--questions", "[residual]", "--relations", relations,
        "--output_dir", "out", "--report", "report.md",
    )  # fmt: skip
    assert code == 0, stderr[-2000:]
    warning = f"lre-pl: warning: relations: the sweep in {swept} has no evaluated bundle of adjective antonym; left out"
    assert warning in stderr.splitlines()
    model = json.loads((swept / "sweep_config.json").read_text())["model"]
    expected = (
        f"Left out of `relations` on {model}, with no evaluated bundle in its sweep: adjective antonym."
    )
    assert expected in (tmp_path / "report.md").read_text()


# ------------------------------------------------------------------------------------------ item 12
@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--top_k", "0"], "top_k=0 must be at least 1"),
        (["--output_dir", "/proc/x"], "output_dir: cannot write in '/proc/x' (No such file or directory): give another output_dir"),
        (["--output_dir", "a_file"], "output_dir: cannot write in 'a_file' (a file, not a folder): give another output_dir"),
        (["--relation", "country capital city"], "--relation chooses a sweep's bundle, but '{run}' is a fit's run folder, which holds one relation: drop --relation, or give a sweep folder"),
        (["--trial", "1"], "--trial chooses a sweep's bundle, but '{run}' is a fit's run folder, which holds one relation: drop --trial, or give a sweep folder"),
    ],
)  # fmt: skip
def test_lens_options_are_checked_before_the_model_loads(run_cli, no_model, fit_run, tmp_path, flags, line):
    (tmp_path / "a_file").write_text("")
    code, stderr = run_cli(
        "lens", "--operators", str(fit_run), "--prompt", TEXT, "--output_dir", "out", *flags
    )
    one_line(code, stderr, line.format(run=fit_run))
    assert not (tmp_path / "out").exists()


def test_lens_options_of_a_sweep_are_refused_with_an_operator_file(run_cli, no_model, fit_run, tmp_path):
    operator = fit_run / "operator.pt"
    code, stderr = run_cli(
        "lens", "--operators", str(operator), "--prompt", TEXT, "--relation", "x", "--trial", "1"
    )
    one_line(
        code, stderr,
        f"--relation and --trial choose a sweep's bundle, but '{operator}' is an operator file, which holds one "
        "relation: drop --relation and --trial, or give a sweep folder",
    )  # fmt: skip


def test_lens_top_k_beyond_the_vocabulary_is_one_line(run_cli, fit_run, tiny_model_dir, tmp_path):
    vocabulary = load_language_model(tiny_model_dir).unembedding.weight.shape[0]
    code, stderr = run_cli("lens", "--operators", str(fit_run), "--prompt", TEXT, "--top_k", "10000000")
    one_line(code, stderr, f"top_k=10000000 exceeds the vocabulary of {tiny_model_dir} ({vocabulary} tokens)")
    assert not (tmp_path / "lightning_logs").exists()


# --------------------------------------------------------------------------------- item 8 (second half)
@pytest.mark.parametrize("changed", ["layer", "model"])
def test_a_run_folder_holding_another_layers_or_models_operator_is_refused(
    run_cli, no_model, fit_run, tmp_path, changed
):
    run = tmp_path / "run"
    shutil.copytree(fit_run, run)
    first = LinearRelationOperator.load(run / "operators" / "layer_0.pt")
    planted = replace(first, model="another/model", layer=1) if changed == "model" else first
    planted.save(run / "operators" / "layer_1.pt")
    code, stderr = run_cli("lens", "--operators", str(run), "--prompt", TEXT)
    file = run / "operators" / "layer_1.pt"
    lines = {
        "layer": f"'{file}' holds an LRE of layer 0, not of layer 1 (its name): the run folder was changed; give "
        "the run folder of one lre-pl fit",
        "model": f"'{file}' holds an LRE of 'country capital city' on another/model (d=32), but "
        f"'{run / 'operators' / 'layer_0.pt'}' one of 'country capital city' on {first.model} (d=32): the operators "
        "of a run folder are of one model, relation and width; give the run folder of one lre-pl fit",
    }
    one_line(code, stderr, lines[changed])


# ---------------------------------------------------------------------------------------- items 13, 14
def study_arguments(command: str, swept: Path, out: Path) -> list[str]:
    if command == "cross-relation":
        return ["cross-relation", "--sweep_dir", str(swept), "--output_dir", str(out)]
    questions = (
        ["--questions", "[residual]"] if command == "beta-study" else ["--relations", json.dumps(RELATIONS)]
    )
    return [command, "--sweep_dirs", f"[{swept}]", "--output_dir", str(out), *questions]


#: Where each command is held while it is signalled: after its folder is locked, before (or while) it writes.
HELD_IN = {
    "beta-study": "lre_pl.experiments.sweep.finished:FinishedSweep.load_model",
    "distracted-lens": "lre_pl.experiments.sweep.finished:FinishedSweep.load_model",
    "cross-relation": "lre_pl.experiments.cross_relation.study:write_figure",  # its first figure
    "lens": "lre_pl.lightning.outputs:write_figure",
}


@pytest.mark.parametrize(
    ("command", "sent", "kept"),
    [
        ("beta-study", signal.SIGINT, "the rows of each bundle's questions answered so far are kept, and rerunning the same command resumes it"),
        ("distracted-lens", signal.SIGINT, "the rows of each relation done so far are kept, and rerunning the same command resumes it"),
        ("cross-relation", signal.SIGINT, "its files appear together at its end, so none of this run's is there (an earlier run's stay as they were); rerun the same command"),
        ("cross-relation", signal.SIGTERM, "its files appear together at its end, so none of this run's is there (an earlier run's stay as they were); rerun the same command"),
        ("lens", signal.SIGINT, "the pictures of the prompts written so far are kept; rerunning the same command makes them all"),
    ],
)  # fmt: skip
def test_a_held_run_locks_its_folder_and_a_signal_stops_it_in_one_true_line(
    run_cli, swept, fit_run, tmp_path, command, sent, kept
):
    out = tmp_path / "out"
    if command == "lens":
        arguments = ["lens", "--operators", str(fit_run), "--prompt", TEXT, "--output_dir", str(out)]
    else:
        arguments = study_arguments(command, swept, out)
    held = start_held_in(tmp_path, arguments, HELD_IN[command])
    try:
        if command != "lens":  # a second run into the same folder is refused at once
            folder = out / swept.name if command != "cross-relation" else out
            started = time.monotonic()
            code, stderr = run_cli(*arguments)
            one_line(
                code, stderr,
                f"another {command} is running in {folder} (pid {held.pid}); wait for it or give another output_dir",
            )  # fmt: skip
            assert time.monotonic() - started < 10
        held.send_signal(sent)
        _, stderr = held.communicate(timeout=60)
    finally:
        if held.poll() is None:
            held.kill()
            held.communicate()
    assert held.returncode == 128 + sent, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == f"lre-pl: error: stopped by {sent.name}; {kept}"
    assert "Traceback" not in stderr
    left = (
        sorted(str(path.relative_to(out)) for path in out.rglob("*") if path.is_file())
        if out.exists()
        else []
    )
    if command == "cross-relation":  # none of its files, nor the folder they were written in
        assert left == [".lock"]


# ------------------------------------------------------------------------------------------ item 15
@pytest.mark.parametrize("command", ["beta-study", "distracted-lens"])
def test_a_report_naming_a_folder_is_refused_before_any_work(run_cli, no_model, swept, tmp_path, command):
    (tmp_path / "docs").mkdir()
    out = tmp_path / "out"
    code, stderr = run_cli(*study_arguments(command, swept, out), "--report", "docs")
    one_line(code, stderr, "report: 'docs' is a folder: give the path of a file to write")
    assert not out.exists() and not list(tmp_path.glob("*.png")) and not list((tmp_path / "docs").iterdir())


# ------------------------------------------------------------------------------------------ item 16
def test_version_prints_the_version(run_cli, capsys):
    from lre_pl.cli import main

    main(["--version"])
    assert capsys.readouterr().out == f"lre-pl {importlib.metadata.version('lre_pl')}\n"


def test_predict_given_a_run_folder_names_its_operator_file(run_cli, no_model, fit_run):
    code, stderr = run_cli("predict", "--operator", str(fit_run), "France")
    one_line(
        code,
        stderr,
        f"operator '{fit_run}' is a folder: give the operator file in it (--operator {fit_run}/operator.pt)",
    )


def test_a_byte_order_mark_is_not_part_of_the_first_subject(run_cli, fit_run, tmp_path, capsys):
    from lre_pl.cli import main, read_lines

    path = tmp_path / "subjects.txt"
    path.write_bytes("\ufeffFrance\nJapan\n".encode())
    assert read_lines(str(path), "prompts_file", "prompt") == ["France", "Japan"]  # lens reads prompts so
    main(["predict", "--operator", str(fit_run / "operator.pt"), "--subjects_file", str(path)])
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [row.split("  ")[0] for row in rows] == ["France", "Japan"]


def test_a_refused_study_leaves_nothing(run_cli, swept, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(swept, copy)
    config = json.loads((copy / "sweep_config.json").read_text())
    (copy / "sweep_config.json").write_text(json.dumps({**config, "model": "no-such-org/no such model"}))
    code, stderr = run_cli(*study_arguments("beta-study", copy, tmp_path / "out"))
    assert code == 2 and stderr.strip().splitlines()[-1].startswith(
        "lre-pl: error: model 'no-such-org/no such model'"
    )
    assert not (tmp_path / "out").exists()
