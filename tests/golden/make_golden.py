"""Writes the golden fixture: the rows and reports of a tiny-model sweep and β study.

Made once, before the redesign of issue 14, with the code of that time; ``test_golden.py`` runs the
same sweep and study with today's code and asserts identical rows. Rerun only when a number is meant
to change, and say which in the commit:

    PYTHONPATH=tests .venv/bin/python tests/golden/make_golden.py
"""

from __future__ import annotations

import gzip
import json
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
GOLDEN = HERE / "tiny_sweep_and_study.json.gz"
#: The questions the fixture was made with: questions added since (issue 15's) have no golden rows.
GOLDEN_QUESTIONS = ("bias_variants", "where_beta", "unit_s", "per_sample_beta", "per_sample_w", "after_norm",
                    "residual", "fixed_beta", "global_beta", "across_trials")  # fmt: skip


def normalise_report(text: str, folder: Path) -> str:
    """Reports without what differs between runs: the temporary folder and the wall times."""
    text = text.replace(str(folder), "<tmp>")
    # The summary's timing table: one header row and one row of seconds.
    return re.sub(
        r"## Where the time went.*?\n\n(\|.*\n)+", "## Where the time went <timings>\n", text, flags=re.S
    )


def run(folder: Path) -> dict:
    """The sweep and study of the fixture, in ``folder``; returns {name: rows or text}."""
    from tiny_models import tiny_llama

    model_dir = folder / "tiny-llama"
    lm = tiny_llama(hidden=32, blocks=3)
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    from lre_pl.experiments.beta_study.study import BetaStudyConfig, run_beta_study
    from lre_pl.experiments.sweep.runner import Sweep, SweepConfig

    sweep_dir, study_dir = folder / "sweep", folder / "study"
    config = SweepConfig(
        model=str(model_dir), relations=["country capital city", "characteristic gender"], trials=[0, 1],
        betas=[0.5, 1.0, 2.0], ranks=[4, 32], known_only=False, batch_size=4, chunk_size=11,
        output_dir=str(sweep_dir), trainer={"accelerator": "cpu", "enable_progress_bar": False},
    )  # fmt: skip
    Sweep(config, command="lre-pl sweep (golden)").run()
    [out] = run_beta_study(
        BetaStudyConfig(
            sweep_dirs=[str(sweep_dir)], output_dir=str(study_dir), report=str(folder / "report.md"),
            questions=list(GOLDEN_QUESTIONS),
        ),
        command="lre-pl beta-study (golden)",
    )
    return collect(folder, sweep_dir, out)


def read_jsonl(path: Path) -> list[dict]:
    """Rows with the temporary model folder named ``<tiny>`` and wall times left out."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip().startswith("{")]
    return [row | {"model": "<tiny>"} | ({"value": None} if row["kind"] == "timing" else {}) for row in rows]


def collect(folder: Path, sweep_dir: Path, study_out: Path) -> dict:
    result = {}
    for path in sorted((sweep_dir / "rows").glob("*.jsonl")):
        result[f"sweep/{path.name}"] = read_jsonl(path)
    for path in sorted((study_out / "rows").rglob("*.jsonl")):
        result[f"study/{path.relative_to(study_out / 'rows')}"] = read_jsonl(path)
    result["summary.md"] = normalise_report((sweep_dir / "summary.md").read_text(), folder)
    result["beta_study.md"] = normalise_report((study_out / "beta_study.md").read_text(), folder)
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    with tempfile.TemporaryDirectory() as tmp:
        made = run(Path(tmp))
    with gzip.open(GOLDEN, "wt") as file:
        json.dump(made, file, indent=0, sort_keys=True)
    print(f"{GOLDEN}: {len(made)} entries")
