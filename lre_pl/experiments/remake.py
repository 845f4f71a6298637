"""Every committed report remade from the committed rows alone (``results/``: no sweep folder, no
bundle, no model): the sweeps' ``summary.md``, the β study's reports and the explanation of β.

A change to the protocol's terms (the selection rule, the tables, the intervals, the coverage lines)
changes what these make of the same rows: ``scripts/remake_reports.py`` writes them again, and
``tests/integration/test_committed_results.py`` checks that the committed files are what they make.
The per-sample W_i tables of the β study hold token strings that rows cannot hold: they are kept from
the committed report.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from lre_pl.experiments.beta_study.questions import REGISTRY
from lre_pl.experiments.beta_study.report import ModelStudy, committed_study, study_markdown
from lre_pl.experiments.sweep.report import write_summary
from lre_pl.experiments.sweep.runner import SweepConfig, listed_tasks
from lre_pl.lightning.outputs import write_figure
from lre_pl.protocol.rows import read_rows_csv

MODELS = ("smollm2-135m", "gemma3-270m")
#: What "Made by" names after the study's own command when a report was remade from its rows.
REMADE = "the report remade from the committed rows: `python scripts/remake_reports.py`"
#: The per-sample W_i table in a report: a bold relation line, then a markdown table.
SAMPLE_TABLE = re.compile(r"\*\*[^*\n]+\*\* \(trial \d+, layer \w+\)\n\n(?:\|.*\n)+")


def _study_commands(report: Path, sweeps: int) -> list[str]:
    """What made a committed report after its ``sweeps`` sweeps' commands, and :data:`REMADE`."""
    made = report.read_text().split("Made by ", 1)[1].split(".\n", 1)[0].split("; ")[sweeps:]
    return made + ([REMADE] if REMADE not in made else [])


def beta_study_reports(root: Path) -> dict[Path, str]:
    """{path: text}: ``results/beta_study/<model>/beta_study.md`` per model and ``docs/beta_study.md``
    (:func:`write_study_figures` draws their figures)."""
    studies = {}
    for model in MODELS:
        folder = root / "results" / "beta_study" / model
        study, made_by, grid = committed_study(folder)
        tables = {"per_sample_w": SAMPLE_TABLE.findall((folder / "beta_study.md").read_text())[:1]}
        studies[model] = (study._replace(tables=tables), made_by, grid)
    texts = {}
    for model, (study, made_by, grid) in studies.items():
        report = root / "results" / "beta_study" / model / "beta_study.md"
        texts[report], _ = study_markdown({model: study}, [made_by, *_study_commands(report, 1)], [grid])
    report = root / "docs" / "beta_study.md"
    texts[report], _ = study_markdown(
        {model: study for model, (study, _, _) in studies.items()},
        [made_by for _, made_by, _ in studies.values()] + _study_commands(report, len(MODELS)),
        [grid for _, _, grid in studies.values()],
    )
    return texts


def explanation_reports(root: Path) -> dict[Path, str]:
    """{path: text}: ``docs/explaining_beta.md`` (every question ``configs/beta/explain.yaml`` asks, its
    conclusion file) and each model's ``results/explaining_beta/<model>/beta_study.md``."""
    config = yaml.safe_load((root / "configs" / "beta" / "explain.yaml").read_text())
    studies = {
        model: committed_study(
            root / "results" / "explaining_beta" / model, config["questions"], config.get("relations")
        )
        for model in MODELS
    }
    report = root / "docs" / "explaining_beta.md"
    notes = [
        line[2:] for line in report.read_text().splitlines() if line.startswith("- The costly questions")
    ]
    conclusion = (root / "docs" / "explaining_beta_conclusion.md").read_text()
    texts = {}
    for model, (study, made_by, grid) in studies.items():
        path = root / "results" / "explaining_beta" / model / "beta_study.md"
        texts[path], _ = study_markdown(
            {model: study}, [made_by, *_study_commands(path, 1)], [grid, *notes], conclusion
        )
    texts[report], _ = study_markdown(
        {model: study for model, (study, _, _) in studies.items()},
        [made_by for _, made_by, _ in studies.values()] + _study_commands(report, len(MODELS)),
        [grid for _, _, grid in studies.values()] + notes,
        conclusion,
    )
    return texts


def sweep_folders(root: Path) -> list[Path]:
    """The committed sweeps: ``results/<name>/`` folders with a ``results.csv.gz`` and a config."""
    return sorted(path.parent for path in (root / "results").glob("*/results.csv.gz") if
                  (path.parent / "sweep_config.json").exists())  # fmt: skip


def remake_sweep_summary(folder: Path) -> str:
    """Write a committed sweep's ``summary.md`` (and its figures) again from its rows; returns the text.
    The tasks its config lists that have no rows are named in it."""
    config = SweepConfig(**json.loads((folder / "sweep_config.json").read_text()))
    listed = listed_tasks(config.relations, config.trials)
    write_summary(folder, read_rows_csv(folder / "results.csv.gz"), config, listed, tensorboard=False)
    return (folder / "summary.md").read_text()


def write_study_figures(directory: Path, studies: dict[str, ModelStudy]) -> None:
    """Every question's figures of ``studies`` (by model) from their rows, as PNGs in ``directory``
    (beside the report that names them)."""
    for model, study in studies.items():
        for name, question in REGISTRY.items():
            rows = [row for row in study.rows if row["kind"] == name]
            for file_name, figure in question().figures(rows, model).items():
                write_figure(figure, directory / file_name)


def committed_studies(root: Path, kind: str) -> dict[str, ModelStudy]:
    """{model: its committed study} of ``kind`` (``beta_study`` or ``explaining_beta``)."""
    asked = None
    if kind == "explaining_beta":
        asked = yaml.safe_load((root / "configs" / "beta" / "explain.yaml").read_text())["questions"]
    return {model: committed_study(root / "results" / kind / model, asked)[0] for model in MODELS}
