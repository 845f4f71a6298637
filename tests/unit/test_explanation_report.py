"""The report of hypotheses (``docs/explaining_beta.md``): a study whose questions each test an
explanation of β opens with the hypotheses table (one line per hypothesis, the measurement and the
verdict of each model) and closes with the verdicts gathered and the conclusion; a fake question in a
patched registry stands for the real ones, so that the layout is tested apart from their numbers."""

from pathlib import Path

import pytest

from lre_pl.errors import InputError
from lre_pl.experiments.beta_study import report
from lre_pl.experiments.beta_study.questions.base import PerBundleQuestion, Verdict
from lre_pl.experiments.beta_study.report import ModelStudy, study_markdown
from lre_pl.experiments.beta_study.study import BetaStudyConfig, copy_results
from lre_pl.protocol.folder import StudyFolder
from lre_pl.protocol.rows import make_row, write_rows
from lre_pl.protocol.selection import SelectionRule

RULE = SelectionRule([0.5, 1.0, 2.0], 1.0)


class Gain(PerBundleQuestion):
    name, number, title = "gain", 11, "A gain"
    hypothesis = "β is a gain"
    prediction = "the gain exceeds 1"

    def summarize(self, rows, rule):
        return {"gain": sum(row["value"] for row in rows) / len(rows)}

    def render(self, numbers, findings):
        return f"gain {numbers['gain']:.2f}\n"

    def measured(self, numbers):
        return f"gain {numbers['gain']:.2f}"

    def judge(self, numbers):
        word = "confirmed" if numbers["gain"] > 1 else "refuted"
        return Verdict(word, f"the gain is {numbers['gain']:.2f}")


def rows(model: str, *values: float) -> list[dict]:
    return [
        make_row(model=model, relation=f"r{i}", category="c", trial=0, kind="gain", estimator="lre",
                 split="all", metric="gain", value=value, n=1)
        for i, value in enumerate(values)
    ]  # fmt: skip


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(report, "REGISTRY", {"gain": Gain})


def test_a_study_of_hypotheses_opens_with_their_table_and_closes_with_the_verdicts(registry):
    studies = {
        "a": ModelStudy(rows("a", 2.0, 3.0), {}, ["gain"], RULE),
        "b": ModelStudy(rows("b", 0.5, 0.5), {}, ["gain"], RULE),
    }
    text, numbers = study_markdown(studies, ["(made)"], conclusion="Gains explain it.\n")
    assert numbers["a"]["gain"] == {"gain": 2.5}
    assert text.startswith("# Explaining β: a, b\n\nMade by (made).\n")
    assert "## The answers" not in text  # no headline lines: the β study's answers table is not this report's
    assert (
        "| hypothesis | its prediction | what was measured (a / b) | verdict |\n|---|---|---|---|\n"
        "| 11. β is a gain | the gain exceeds 1 | a: gain 2.50; b: gain 0.50 | "
        "**confirmed** on a: the gain is 2.50; **refuted** on b: the gain is 0.50 |\n"
    ) in text
    assert text.index("## The hypotheses") < text.index("## 11. A gain") < text.index("## What explains β")
    assert text.endswith(
        "## What explains β\n\n- **a**: confirmed: 11; refuted: none; inconclusive: none.\n"
        "- **b**: confirmed: none; refuted: 11; inconclusive: none.\n\nGains explain it.\n"
    )


def test_one_verdict_on_every_model_is_written_once(registry):
    studies = {model: ModelStudy(rows(model, 2.0), {}, ["gain"], RULE) for model in ("a", "b")}
    text, _ = study_markdown(studies)
    assert "| **confirmed**: a: the gain is 2.00; b: the gain is 2.00 |" in text


def test_a_missing_conclusion_file_is_one_line(tmp_path):
    config = BetaStudyConfig(sweep_dirs=[str(tmp_path)], conclusion=str(tmp_path / "none.md"))
    with pytest.raises(
        InputError, match=r"^conclusion='.*none.md' is not a file: give a markdown file or null$"
    ):
        config.check()


def test_copy_results_writes_the_gzipped_rows_report_and_sweep_files(tmp_path):
    import gzip

    out = tmp_path / "study"
    folder = StudyFolder(out)
    write_rows(folder.rows("gain", "r0", 0), rows("m", 1.0))
    (out / "results.csv").write_text("kind,value\ngain,1.0\n")
    (out / "beta_study.md").write_text("# report\n")
    (out / "gain_m.png").write_bytes(b"png")
    folder.sweep_config.write_text('{"model": "some/dir/m"}\n')
    folder.sweep_commands.write_text("lre-pl sweep\n")
    target = copy_results(out, tmp_path / "results")
    assert target == tmp_path / "results" / "m"
    assert sorted(path.name for path in target.iterdir()) == [
        "beta_study.md", "gain_m.png", "results.csv.gz", "sweep_command.txt", "sweep_config.json"
    ]  # fmt: skip
    assert gzip.decompress((target / "results.csv.gz").read_bytes()) == b"kind,value\ngain,1.0\n"
    assert copy_results(tmp_path / "empty", tmp_path / "results") is None
    assert not Path(tmp_path / "results" / "empty").exists()


def test_every_hypothesis_question_renders_and_judges_no_rows_as_inconclusive():
    """A question can be answered with no rows (every bundle too small, a sweep without ranks): its
    section, its table cell and its verdict still come out, and the verdict is inconclusive."""
    from lre_pl.experiments.beta_study.questions import EXPLANATIONS, REGISTRY
    from lre_pl.experiments.beta_study.questions.base import Findings

    for name in EXPLANATIONS:
        question = REGISTRY[name]()
        numbers = question.summarize([], RULE)
        assert question.render(numbers, Findings("m", RULE, {name: numbers})), name
        assert question.measured(numbers), name
        assert question.judge(numbers).word == "inconclusive", name


def efficacy_rows(differences: dict[tuple[str, int], float]) -> list[dict]:
    """Question 12's rows: per (relation, trial) one rank, the LRE's test efficacy 0.5 and W_chord's
    0.5 + the given difference (dev only picks the rank)."""
    return [
        make_row(model="m", relation=relation, category="c", trial=trial, kind="chord_causality",
                 estimator=editor, layer="3", rank=8, split=split, metric="efficacy",
                 value=0.5 + (difference if editor == "chord" and split == "test" else 0.0), n=4)
        for (relation, trial), difference in differences.items()
        for editor in ("lre", "chord")
        for split in ("dev", "test")
    ]  # fmt: skip


def judged(differences: dict[tuple[str, int], float]):
    from lre_pl.experiments.beta_study.questions import REGISTRY

    question = REGISTRY["chord_causality"]()
    return question.judge(question.summarize(efficacy_rows(differences), SelectionRule([1.0], 1.0, [8])))


def test_a_verdict_is_confirmed_or_refuted_only_when_the_interval_of_its_difference_excludes_0():
    """W_chord − the LRE in efficacy, 5 relations × 2 trials: the same +0.2 in every bundle is a real
    difference whose interval is exactly [+0.2, +0.2]; −0.2 everywhere refutes."""
    better = {(f"r{i}", t): 0.2 for i in range(5) for t in (0, 1)}
    word, why = judged(better)
    assert word == "confirmed"
    assert why.endswith(
        "W_chord's efficacy − the LRE's +0.200 [+0.200, +0.200] (5 relations, 10 bundles, 95 % bootstrap "
        "interval): a real difference"
    )
    assert judged({key: -0.2 for key in better}).word == "refuted"


def test_a_difference_that_straddles_0_or_rests_on_fewer_than_five_relations_is_inconclusive():
    """Relations that disagree (+0.3, −0.3, +0.1, −0.2, +0.2; trials ±0.05 about them): the mean +0.020
    has an interval holding 0, so no detectable difference; 1 or 4 relations have no interval at all, even
    with the same +0.2 in every bundle."""
    centres = (("r0", 0.3), ("r1", -0.3), ("r2", 0.1), ("r3", -0.2), ("r4", 0.2))
    mixed = {(relation, trial): centre + (0.05 if trial else -0.05)
             for relation, centre in centres for trial in (0, 1)}  # fmt: skip
    word, why = judged(mixed)
    assert word == "inconclusive" and why.endswith(": no detectable difference")
    low, high = (float(x) for x in why.split("[")[1].split("]")[0].split(", "))
    assert low < 0 < high and f"{sum(mixed.values()) / 10:+.3f} [" in why
    word, why = judged({("r0", 0): 0.4, ("r0", 1): 0.3})
    assert word == "inconclusive" and "+0.350 [1 relation: too few for an interval]" in why
    word, why = judged({(f"r{i}", t): 0.2 for i in range(4) for t in (0, 1)})
    assert word == "inconclusive"
    assert why.endswith(
        "W_chord's efficacy − the LRE's +0.200 [4 relations: too few for an interval] (4 relations, 8 bundles): "
        "no detectable difference"
    )
