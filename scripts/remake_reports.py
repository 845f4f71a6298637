"""Remake the committed β-study reports from their committed rows, with the functions that
tests/integration/test_committed_results.py checks them with: results/beta_study/<model>/beta_study.md
for each model, and docs/beta_study.md over both. Run from the repository's root after a change to the
report's terms: ``python scripts/remake_reports.py``. The per-sample W_i table (its tokens are not in the
rows) is kept from each model's committed report, and the figures are left as they are."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from lre_pl.experiments.beta_study.report import study_markdown  # noqa: E402
from lre_pl.files import write_text_atomically  # noqa: E402
from tests.integration.test_committed_results import MODELS, committed_study  # noqa: E402

#: What "Made by" names after the study's command: this script, which remade the report.
REMADE = "the report remade from the committed rows: `python scripts/remake_reports.py`"


def study_commands(report: Path, sweeps: int) -> list[str]:
    """What made a committed report after its ``sweeps`` sweeps' commands (the study's command), and
    this script (:data:`REMADE`)."""
    made = report.read_text().split("Made by ", 1)[1].split(".\n", 1)[0].split("; ")[sweeps:]
    return made + ([REMADE] if REMADE not in made else [])


#: The per-sample W_i table in a report: a bold relation line, then a markdown table (as the test drops it).
SAMPLE_TABLE = re.compile(r"\*\*[^*\n]+\*\* \(trial \d+, layer \w+\)\n\n(?:\|.*\n)+")


def main() -> None:
    studies = {}
    for model in MODELS:
        study, made_by, grid = committed_study(model)
        committed = (ROOT / "results" / "beta_study" / model / "beta_study.md").read_text()
        tables = {"per_sample_w": SAMPLE_TABLE.findall(committed)[:1]}
        studies[model] = (study._replace(tables=tables), made_by, grid)
    for model, (study, made_by, grid) in studies.items():
        report = ROOT / "results" / "beta_study" / model / "beta_study.md"
        text, _ = study_markdown({model: study}, [made_by, *study_commands(report, 1)], [grid])
        write_text_atomically(report, text)
        print(report)
    report = ROOT / "docs" / "beta_study.md"
    text, _ = study_markdown(
        {model: study for model, (study, _, _) in studies.items()},
        [made_by for _, made_by, _ in studies.values()] + study_commands(report, len(MODELS)),
        [grid for _, _, grid in studies.values()],
    )
    write_text_atomically(report, text)
    print(report)


if __name__ == "__main__":
    main()
