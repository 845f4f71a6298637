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
    assert "| factual | 2/2 | 0.50 ± 0.14 | – | – | – | – | – |" in text
    assert "| bias | 0/1 | – |" in text  # counted, never evaluated
    assert "| **all** | 2/3 | 0.50 ± 0.14 |" in text
    assert "| factual | 2/2 | 0.80 ± 0.14 |" in text  # causality: capital only (language has no edit rows)
    assert "| capital | factual | 13 | 0.65 | 0.70 ± 0.14 | 3 | 2 | 0.80 ± 0.14 | 8 |" in text
    assert "- gender (bias): every trial (known per trial: 2, 3)" in text
    assert "## Not evaluated: fewer than 4 known test samples" in text
