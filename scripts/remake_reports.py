"""Remake every committed report and its figures from the committed rows (``results/``), after a change
to the protocol's terms (the tables, the intervals, the coverage lines), from the repository's root:

    python scripts/remake_reports.py

It writes each sweep's ``results/<sweep>/summary.md`` and figures, the β study's reports
(``results/beta_study/<model>/beta_study.md``, ``docs/beta_study.md``) and the explanation of β's
(``results/explaining_beta/<model>/beta_study.md``, ``docs/explaining_beta.md``) with their figures.
``tests/integration/test_committed_results.py`` checks that the committed files are what it makes.
"""

from pathlib import Path

from lre_pl.experiments.remake import (
    beta_study_reports,
    committed_studies,
    explanation_reports,
    remake_sweep_summary,
    sweep_folders,
    write_study_figures,
)
from lre_pl.files import write_text_atomically

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    for folder in sweep_folders(ROOT):
        remake_sweep_summary(folder)
        print(folder / "summary.md")
    for kind, reports in (("beta_study", beta_study_reports), ("explaining_beta", explanation_reports)):
        for path, text in reports(ROOT).items():
            write_text_atomically(path, text)
            print(path)
        studies = committed_studies(ROOT, kind)
        for model, study in studies.items():
            write_study_figures(ROOT / "results" / kind / model, {model: study})
        write_study_figures(ROOT / "docs", studies)


if __name__ == "__main__":
    main()
