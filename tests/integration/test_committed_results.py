"""The committed reports (results/, docs/beta_study.md, docs/explaining_beta.md) are what today's report
code makes of their committed rows (:mod:`lre_pl.experiments.remake`): a change to the protocol's terms
(the selection rule, the tables, the intervals) that would change a cell of them fails here until
``python scripts/remake_reports.py`` writes them again. The per-sample W_i tables are not in the rows;
they are kept from the committed reports."""

import shutil
from pathlib import Path

import pytest

from lre_pl.experiments.remake import (
    beta_study_reports,
    explanation_reports,
    remake_sweep_summary,
    sweep_folders,
)

ROOT = Path(__file__).parents[2]


def test_the_beta_study_reports_are_remade_from_their_rows():
    texts = beta_study_reports(ROOT)
    assert len(texts) == 3
    for path, text in texts.items():
        assert text == path.read_text(), f"{path} is not what its rows make: python scripts/remake_reports.py"


def test_the_explanation_reports_are_remade_from_their_rows():
    texts = explanation_reports(ROOT)
    assert len(texts) == 3 and texts[ROOT / "docs" / "explaining_beta.md"].startswith("# Explaining β: ")
    for path, text in texts.items():
        assert text == path.read_text(), f"{path} is not what its rows make: python scripts/remake_reports.py"


@pytest.mark.parametrize("folder", sweep_folders(ROOT), ids=lambda folder: folder.name)
def test_each_sweep_summary_is_remade_from_its_rows(folder, tmp_path):
    copy = tmp_path / folder.name
    copy.mkdir()
    for name in ("results.csv.gz", "sweep_config.json"):
        shutil.copy(folder / name, copy / name)
    assert remake_sweep_summary(copy) == (folder / "summary.md").read_text()
    assert "missing without a recorded reason" not in (folder / "summary.md").read_text()
