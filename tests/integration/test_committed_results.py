"""The committed β study reports (results/beta_study/, docs/beta_study.md) are what today's report code
makes of their committed rows: a change to the protocol's terms (the selection rule, the tables) that
would change a cell of them fails here. The per-sample W_i tables are not committed (tables/ stays
with the study folder), so their block is left out of the comparison."""

import csv
import gzip
import io
import json
import re
from pathlib import Path

import pytest

from lre_pl.experiments.beta_study.report import ModelStudy, _grid_line, study_markdown
from lre_pl.protocol.selection import SelectionRule

ROOT = Path(__file__).parents[2]
MODELS = ("smollm2-135m", "gemma3-270m")


def typed(row: dict) -> dict:
    """A results.csv row with the types the rows files hold."""
    convert = {"trial": int, "n": int, "rank": int, "value": float, "beta": float}
    return {key: None if value == "" else convert.get(key, str)(value) for key, value in row.items()}


def committed_study(model: str) -> tuple[ModelStudy, str, str]:
    folder = ROOT / "results" / "beta_study" / model
    with gzip.open(folder / "results.csv.gz", "rt", encoding="utf-8") as file:
        rows = [typed(row) for row in csv.DictReader(io.StringIO(file.read()))]
    sweep = json.loads((folder / "sweep_config.json").read_text())
    answered = sorted({row["kind"] for row in rows} | {"across_trials"})  # a question may have no rows
    commands = (folder / "sweep_command.txt").read_text().splitlines()
    made_by = f"{model}'s sweep: " + ", then ".join(f"`{line}`" for line in commands)
    return (
        ModelStudy(rows, {}, answered, SelectionRule.of_sweep(sweep)),
        made_by,
        _grid_line(model, rows, sweep),
    )


def without_sample_tables(text: str) -> str:
    """The report less the per-sample W_i table (a bold relation line, then a markdown table)."""
    text = re.sub(r"\n\*\*[^*\n]+\*\* \(trial \d+, layer \w+\)\n\n(\|.*\n)+", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text)


@pytest.mark.parametrize("model", MODELS)
def test_each_models_committed_report_is_remade_from_its_rows(model):
    study, made_by, grid = committed_study(model)
    committed = (ROOT / "results" / "beta_study" / model / "beta_study.md").read_text()
    study_command = committed.split("Made by ", 1)[1].split(".\n", 1)[0].split("; ")[1:]
    text, _ = study_markdown({model: study}, [made_by, *study_command], [grid])
    assert without_sample_tables(text) == without_sample_tables(committed)


def test_the_two_model_report_in_docs_is_remade_from_the_rows():
    studies = {model: committed_study(model) for model in MODELS}
    committed = (ROOT / "docs" / "beta_study.md").read_text()
    study_command = committed.split("Made by ", 1)[1].split(".\n", 1)[0].split("; ")[len(MODELS) :]
    text, _ = study_markdown(
        {model: study for model, (study, _, _) in studies.items()},
        [made_by for _, made_by, _ in studies.values()] + study_command,
        [grid for _, _, grid in studies.values()],
    )
    assert without_sample_tables(text) == without_sample_tables(committed)


def test_the_explanation_report_in_docs_is_remade_from_its_committed_rows():
    """docs/explaining_beta.md from results/explaining_beta/ and the conclusion file: every table, cell
    and verdict of the committed report is what today's questions make of the committed rows."""
    import yaml

    committed = (ROOT / "docs" / "explaining_beta.md").read_text()
    asked = yaml.safe_load((ROOT / "configs" / "beta" / "explain.yaml").read_text())["questions"]
    studies, made_by, grids = {}, [], []
    for model in MODELS:
        folder = ROOT / "results" / "explaining_beta" / model
        with gzip.open(folder / "results.csv.gz", "rt", encoding="utf-8") as file:
            rows = [typed(row) for row in csv.DictReader(io.StringIO(file.read()))]
        sweep = json.loads((folder / "sweep_config.json").read_text())
        # Every question explain.yaml asks is answered, with rows or without (Gemma 3's sweep has no ranks).
        studies[model] = ModelStudy(rows, {}, asked, SelectionRule.of_sweep(sweep))
        commands = (folder / "sweep_command.txt").read_text().splitlines()
        made_by.append(f"{model}'s sweep: " + ", then ".join(f"`{line}`" for line in commands))
        grids.append(_grid_line(model, rows, sweep))
    study_command = committed.split("Made by ", 1)[1].split(".\n", 1)[0].split("; ")[len(MODELS) :]
    notes = [line[2:] for line in committed.splitlines() if line.startswith("- The costly questions")]
    conclusion = (ROOT / "docs" / "explaining_beta_conclusion.md").read_text()
    text, _ = study_markdown(studies, made_by + study_command, grids + notes, conclusion)
    assert notes and text.startswith("# Explaining β: smollm2-135m, gemma3-270m")
    assert text == committed
