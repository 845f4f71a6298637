"""The sweep's summary from hand-written rows: category means over relations, then mean ± std over
trials; the relations with too few known samples listed, never dropped silently. No model needed."""

from lre_pl.experiments.sweep.report import SweepResults, summary_markdown
from lre_pl.experiments.sweep.runner import SweepConfig
from lre_pl.protocol.rows import make_row


def selected(relation, category, trial, value, metric="faithfulness@1", estimator="lre", layer="3", beta=2.0):
    return make_row(
        model="m", relation=relation, category=category, trial=trial, kind="selected", selection="dev",
        estimator=estimator, layer=layer, beta=beta, rank=8 if metric == "efficacy" else None, split="test",
        metric=metric, value=value, n=10,
    )  # fmt: skip


def count(relation, category, trial, metric, value):
    return make_row(
        model="m", relation=relation, category=category, trial=trial, kind="count", split="all", metric=metric,
        value=value, n=20,
    )  # fmt: skip


ROWS = [
    selected("capital", "factual", 0, 0.8), selected("capital", "factual", 1, 0.6),
    selected("language", "factual", 0, 0.4), selected("language", "factual", 1, 0.2),
    selected("capital", "factual", 0, 0.9, metric="efficacy"), selected("capital", "factual", 1, 0.7, metric="efficacy"),
    count("capital", "factual", 0, "known_test_samples", 12.0), count("capital", "factual", 1, "known_test_samples", 14.0),
    count("capital", "factual", 0, "lm_accuracy", 0.6), count("capital", "factual", 1, "lm_accuracy", 0.7),
    count("gender", "bias", 0, "known_test_samples", 2.0), count("gender", "bias", 0, "too_few_known", 1.0),
    count("gender", "bias", 1, "known_test_samples", 3.0), count("gender", "bias", 1, "too_few_known", 1.0),
]  # fmt: skip


def test_the_summary_averages_relations_per_trial_then_trials():
    config = SweepConfig(model="m", layers=[3], betas=[1.0, 2.0], ranks=[8], min_known=4)
    text = summary_markdown(SweepResults(ROWS), config)
    # factual, LRE: trial 0 mean(0.8, 0.4) = 0.6, trial 1 mean(0.6, 0.2) = 0.4: 0.50 ± 0.14 over trials.
    assert "| factual | 2 | 0.50 ± 0.14 (2 rel., 4 bundles) |" in text
    assert "| bias | 1 | – (none of 1: too few known test samples) |" in text  # counted, never evaluated
    assert "| **all** | 3 | 0.50 ± 0.14 (2 rel., 4 bundles) |" in text
    # causality: capital only (language has no edit rows), and the cell says so.
    assert "| factual | 2 | 0.80 ± 0.14 (1 rel., 2 bundles) |" in text
    assert (
        "| capital | factual | 13 ± 1 | 0.65 ± 0.07 | 0.70 ± 0.14 | 3/3 | 2/2 | 0.80 ± 0.14 | 8/8 |" in text
    )
    assert "- gender (bias), trial 0, 1: faithfulness@1: too few known test samples" in text
    assert "## Missing values and why" in text


NO_TARGET = [
    selected("age", "bias", 0, 0.5), selected("age", "bias", 1, 0.7), selected("age", "bias", 2, 0.9),
    selected("age", "bias", 1, 0.78, metric="efficacy"),
    count("age", "bias", 0, "no_edit_target", 1.0), count("age", "bias", 2, "no_edit_target", 1.0),
    selected("sex", "bias", 0, 0.4), count("sex", "bias", 0, "no_edit_target", 1.0),
    selected("job", "bias", 0, 0.2), selected("job", "bias", 0, 0.3, metric="efficacy"),
]  # fmt: skip


def test_every_missing_value_carries_its_reason_and_every_cell_its_count():
    listed = [("age", 0), ("age", 1), ("age", 2), ("sex", 0), ("job", 0), ("job", 1)]
    config = SweepConfig(model="m", layers=[3], betas=[1.0, 2.0], ranks=[8], min_known=4, max_known=50)
    text = summary_markdown(SweepResults(NO_TARGET, listed), config)
    # efficacy: age has a value in trial 1 only, sex none, job trial 0; per trial: t0 job .3, t1 age .78.
    assert "| bias | 3 | 0.54 ± 0.34 (2 rel., 2 bundles) |" in text
    assert (
        "| age | bias | – | – | 0.70 ± 0.20 | 3/3/3 | 2/2/2 | 0.78 (trial 0, 2: no target) | –/8/– |" in text
    )
    assert "| sex | bias | – | – | 0.40 | 3 | 2 | – (no target) | – |" in text
    assert (
        "| job | bias | – | – | 0.20 (trial 1: not run) | 3/– | 2/– | 0.30 (trial 1: not run) | 8/– |" in text
    )
    assert "- age (bias), trial 0, 2: efficacy: no target: every known sample has the same object" in text
    assert "- job (bias), trial 1: faithfulness@1: not run: the config lists it" in text
    assert "**listed but not in the folder** (1 of 6 tasks): job trial 1" in text
    assert "at most 50 (a seeded subset)" in text
    never = summary_markdown(SweepResults(NO_TARGET, [*listed, ("moon", 0)]), config)
    assert (
        "| moon | – (not run) | – (not run) | – (not run) | – (not run) | – | – | – (not run) | – |" in never
    )
    assert "(2 of 7 tasks): job trial 1, moon trial 0" in never


def test_a_category_without_any_value_says_why_and_unmeasured_columns_are_left_out():
    config = SweepConfig(
        model="m", layers=[3], betas=[1.0], ranks=[8], comparison_edits=False, estimators=["lre"]
    )
    text = summary_markdown(SweepResults(NO_TARGET[6:8]), config)
    assert "| bias | 1 | – (none of 1: no target) |" in text
    assert "translation" not in text and "s → s'" not in text and "LRE at emb" not in text
    no_ranks = summary_markdown(
        SweepResults(NO_TARGET), SweepConfig(model="m", ranks=[], comparison_edits=False)
    )
    assert "Not measured: the config has no ranks and no comparison edits." in no_ranks
    assert "efficacy:" not in no_ranks
