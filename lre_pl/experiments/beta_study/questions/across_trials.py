"""10. Hyper-parameters held fixed across trials: the spread."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping

from lre_pl.experiments.beta_study.context import StudyContext, SweepStudy
from lre_pl.experiments.beta_study.questions.base import (
    AcrossBundlesQuestion,
    Findings,
    Numbers,
    bundles_of,
    difference_words,
    register,
    verdict,
)
from lre_pl.protocol.markdown import markdown_table, mean_std_cell, nanmean
from lre_pl.protocol.selection import SelectionRule

Layer = int | str
VARIANTS = ("fixed", "own")


def across_trials_rows(
    contexts: Mapping[int, StudyContext], points: Mapping[int, tuple[Layer, float]]
) -> list[dict]:
    """One relation's trials: test faithfulness with the first trial's (layer, β) held fixed (``fixed``)
    and with each trial's own dev choice (``own``). ``contexts`` and ``points`` are keyed by trial."""
    held = points[min(contexts)]
    return [
        context.row(kind="across_trials", estimator=variant, layer=str(at), beta=beta, split="test",
                    metric="faithfulness@1", value=context.test_faithfulness(beta, at),
                    n=len(context.splits["test"]))
        for trial, context in contexts.items()
        for variant, (at, beta) in (("fixed", held), ("own", points[trial]))
    ]  # fmt: skip


def _trials(study: SweepStudy) -> dict[str, list[int]]:
    """{relation: its evaluated trials}."""
    trials = defaultdict(list)
    for relation, trial in study.keys:
        trials[relation].append(trial)
    return trials


@register
class AcrossTrials(AcrossBundlesQuestion):
    """The spread over trials of test faithfulness with the layer and β chosen on the first trial held
    fixed, against each trial's own choice (needs 2+ trials of a relation)."""

    name = "across_trials"
    number = 10
    title = "Hyper-parameters held fixed across trials: the spread"

    def rows(self, study: SweepStudy) -> list[dict]:
        rows = []
        for relation, seeds in sorted(_trials(study).items()):
            usable = study.usable([(relation, trial) for trial in seeds])
            contexts = {trial: context for (_, trial), context in usable.items()}
            if len(contexts) >= 2:
                rows += across_trials_rows(contexts, {t: study.points[relation, t] for t in contexts})
        return rows

    def covers(self, rows: list[dict], study: SweepStudy) -> bool:
        several = {
            (relation, trial)
            for relation, seeds in _trials(study).items()
            if len(seeds) >= 2
            for trial in seeds
        }
        return bundles_of(rows, "fixed") == several

    def summarize(self, rows: list[dict], rule: SelectionRule) -> Numbers:
        """Per relation the test faithfulness of each trial, per variant; the mean std over relations."""
        values = defaultdict(lambda: defaultdict(list))  # relation -> variant -> per-trial values
        for row in rows:
            values[row["relation"]][row["estimator"]].append(row["value"])
        if not values:
            return {}
        per_relation = {relation: dict(variants) for relation, variants in sorted(values.items())}
        spreads = {
            variant: nanmean(statistics.stdev(v[variant]) for v in per_relation.values())
            for variant in VARIANTS
        }
        return {"per_relation": per_relation, **spreads, "relations": len(per_relation)}

    def render(self, numbers: Numbers, findings: Findings) -> str:
        if not numbers:
            return "No relation has two or more evaluated trials: run the sweep with several trials.\n"
        table = markdown_table(
            ["relation", "trials", "first trial's (layer, β) held fixed", "each trial's own choice"],
            [
                [relation, str(len(v["fixed"])),
                 *(mean_std_cell(v[variant], ".3f") for variant in VARIANTS)]
                for relation, v in numbers["per_relation"].items()
            ],
        )  # fmt: skip
        stds = {  # one value per relation: the bootstrap's bundles are the relations here
            variant: {(relation, "std"): statistics.stdev(v[variant]) for relation, v in numbers["per_relation"].items()}
            for variant in VARIANTS
        }  # fmt: skip
        return table + verdict(
            f"Over {numbers['relations']} relations, the std over trials averages {numbers['fixed']:.3f} with the "
            f"hyper-parameters held fixed and {numbers['own']:.3f} with each trial choosing its own; held fixed "
            f"minus own, per relation: {difference_words(stds['fixed'], stds['own'])}."
        )
