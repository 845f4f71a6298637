"""17. Confidence and distance: does the per-sample β grow with the LM's confidence, or with ‖s − s̄‖?

Hypothesis 5 of issue 15: β compensates for the LM's saturation. If it does, the samples the LM is
surest of (high probability of its own answer, a wide logit margin) and those whose subject state lies
far from the training subjects' mean need a larger β. Reads bundles alone: one decode of each known
sample's o, then the per-sample smallest β of question 4.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

import torch

from lre_pl.experiments.beta_study.context import StudyContext
from lre_pl.experiments.beta_study.questions.base import (
    NAN,
    Findings,
    Numbers,
    PerBundleQuestion,
    Verdict,
    figure_name,
    register,
    section,
    verdict,
)
from lre_pl.experiments.beta_study.questions.differences import difference, weigh
from lre_pl.experiments.beta_study.questions.per_sample_beta import smallest_beta, top1_answers
from lre_pl.protocol.correlation import spearman
from lre_pl.protocol.markdown import markdown_table
from lre_pl.protocol.selection import SelectionRule

#: What each sample's smallest β is set against, and how the report names it.
MEASURES = {
    "own_probability": "the LM's probability of its own answer",
    "logit_margin": "its logit margin (top-1 − top-2)",
    "distance_to_mean_subject": "‖s − s̄‖ (s̄: the training subjects' mean)",
}


def confidence_measures(context: StudyContext) -> dict[str, torch.Tensor]:
    """{measure: [known]} of the evaluated samples, and ``own``: the LM's own top-1 token ids [known]."""
    b, lm, i = context.bundle, context.decoder.lm, context.bundle.layer_index(context.layer)
    with torch.no_grad():
        logits = lm.decode(b.test_output_states[context.known].to(lm.device)).float().cpu()  # [known, vocab]
    top = logits.topk(2)  # [known, 2]
    s = b.test_states(context.layer)[context.known]  # [known, d]
    return {
        "own": top.indices[:, 0],
        "own_probability": logits.softmax(-1).gather(-1, top.indices[:, :1])[:, 0],
        "logit_margin": top.values[:, 0] - top.values[:, 1],
        "distance_to_mean_subject": (s - b.train_subject_states[:, i].mean(0)).norm(dim=-1),
    }


def spearman_where_found(pairs: list[tuple[float, float]]) -> float:
    """Spearman's ρ of (smallest β, measure) pairs, samples without a β (NaN) left out."""
    kept = [(beta, value) for beta, value in pairs if not math.isnan(beta)]
    return spearman([beta for beta, _ in kept], [value for _, value in kept]) if len(kept) > 2 else NAN


def plot_confidence(model: str, rows: list[dict], numbers: Numbers):
    """Per measure, the smallest β of every sample against it (pooled over relations)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(MEASURES), figsize=(5 * len(MEASURES), 4), squeeze=False)
    for axis, (measure, label) in zip(axes[0], MEASURES.items()):
        pairs = [(row["value"], row["beta"]) for row in rows if row["metric"] == measure]
        found = [(x, beta) for x, beta in pairs if not math.isnan(beta)]
        axis.scatter([x for x, _ in found], [beta for _, beta in found], s=8, alpha=0.6)
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_xlabel(label, fontsize=8)
        axis.set_ylabel("smallest β giving the LM's own answer", fontsize=8)
        axis.set_title(f"ρ = {numbers['measures'][measure]['pooled_rho']:.2f} ({len(found)} samples; "
                       f"{len(pairs) - len(found)} without a β ≤ 10)", fontsize=8)  # fmt: skip
    figure.suptitle(f"{model}: the per-sample β against confidence and distance (line: β = 1)")
    figure.tight_layout(rect=(0, 0, 1, 0.95))  # room for the title
    return figure


@register
class Confidence(PerBundleQuestion):
    """Per known sample (dev and test), the smallest β at which the readout of the mean W and b names
    the LM's own answer (question 4's search) against the LM's probability of that answer, its logit
    margin and ‖s − s̄‖. One row per sample and measure: the measure in ``value``, the β in ``beta``."""

    name = "confidence"
    number = 17
    title = "Confidence and distance: the per-sample β against the LM's probability, its margin and ‖s − s̄‖"
    hypothesis = (
        "β compensates for the LM's saturation: confident samples (and those far from s̄) need larger β"
    )
    prediction = (
        "Spearman's ρ > 0 between the per-sample β and the probability, the logit margin and ‖s − s̄‖ (each ρ "
        "per bundle, its 95 % interval above 0)"
    )

    def rows(self, context: StudyContext) -> list[dict]:
        measures = confidence_measures(context)
        projection, bias = context.projection_and_bias()
        betas = smallest_beta(
            top1_answers(context.decoder.lm), projection, bias.expand_as(projection), measures.pop("own")
        )
        split_of = ["test"] * len(context)
        for position in context.splits["dev"].tolist():
            split_of[position] = "dev"
        return [
            context.row(kind=self.name, estimator="lre", layer=str(context.layer), split=split_of[j],
                        beta=beta, metric=measure, value=values[j].item(), n=1)
            for measure, values in measures.items()
            for j, beta in enumerate(betas.tolist())
        ]  # fmt: skip

    def summarize(self, rows: list[dict], rule: SelectionRule) -> Numbers:
        """{samples, without_beta, bundles, measures: {measure: pooled ρ, median per-relation ρ, and
        how many relations have one}, per_bundle: {measure: {(relation, trial): ρ}} (the verdict's)}."""
        pairs = defaultdict(lambda: defaultdict(list))  # measure -> (relation, trial) -> (β, value)
        for row in rows:
            pairs[row["metric"]][row["relation"], row["trial"]].append((row["beta"], row["value"]))
        measures, per_bundle = {}, {}
        for measure in MEASURES:
            by_bundle = pairs.get(measure, {})
            per_bundle[measure] = {
                key: rho
                for key, values in by_bundle.items()
                if not math.isnan(rho := spearman_where_found(values))
            }
            per_relation = list(per_bundle[measure].values())
            measures[measure] = {
                "pooled_rho": spearman_where_found([pair for values in by_bundle.values() for pair in values]),
                "median_relation_rho": statistics.median(per_relation) if per_relation else NAN,
                "relations": len(per_relation),
            }  # fmt: skip
        betas = [beta for values in pairs.get("own_probability", {}).values() for beta, _ in values]
        return {
            "samples": len(betas),
            "without_beta": sum(math.isnan(beta) for beta in betas),
            "bundles": len(pairs.get("own_probability", {})),
            "measures": measures,
            "per_bundle": per_bundle,
        }

    def render(self, numbers: Numbers, findings: Findings) -> str:
        table = [
            [label, f"{m['pooled_rho']:.2f}", f"{m['median_relation_rho']:.2f}", str(m["relations"])]
            for measure, label in MEASURES.items()
            for m in [numbers["measures"][measure]]
        ]
        headings = [
            "smallest β against",
            "Spearman's ρ, pooled",
            "ρ, median per relation",
            "relations with a ρ",
        ]
        found = self.judge(numbers)
        return section(markdown_table(headings, table), (
            f"\n{numbers['samples']} known samples (dev and test) of {numbers['bundles']} bundles; "
            f"{numbers['without_beta']} have no β ≤ 10 that gives the LM's own answer and are left out of ρ. "
            f"Figure: `{figure_name(findings.model, self.name)}`. The verdict reads each measure's ρ per bundle: "
            "confirmed when all three have a 95 % bootstrap interval above 0, refuted when one lies below 0, else "
            "inconclusive.\n"
            + verdict(f"{found.word}: {found.why}")
        ))  # fmt: skip

    def figures(self, rows: list[dict], model: str) -> dict:
        if not rows:
            return {}
        numbers = self.summarize(rows, SelectionRule([1.0]))  # the rule plays no part in this summary
        return {figure_name(model, self.name): plot_confidence(model, rows, numbers)}

    def measured(self, numbers: Numbers) -> str:
        m = numbers["measures"]
        return (
            f"ρ = {m['own_probability']['pooled_rho']:.2f} (probability), {m['logit_margin']['pooled_rho']:.2f} "
            f"(margin), {m['distance_to_mean_subject']['pooled_rho']:.2f} (‖s − s̄‖) over "
            f"{numbers['samples'] - numbers['without_beta']} samples"
        )

    def judge(self, numbers: Numbers) -> Verdict:
        """Confirmed when each measure's ρ per bundle has a 95 % interval above 0, refuted when one has it
        below 0, else inconclusive."""
        m = numbers["measures"]
        lead = (
            f"pooled ρ {m['own_probability']['pooled_rho']:.2f} (probability), {m['logit_margin']['pooled_rho']:.2f} "
            f"(margin), {m['distance_to_mean_subject']['pooled_rho']:.2f} (distance); {numbers['samples'] - numbers['without_beta']} "
            f"samples with a β ({numbers['without_beta']} without)"
        )  # fmt: skip
        names = {
            "own_probability": "probability",
            "logit_margin": "margin",
            "distance_to_mean_subject": "distance",
        }
        return weigh(
            [difference(numbers["per_bundle"][measure], 0.0, f"ρ per bundle ({names[measure]})", "+.2f") for measure in MEASURES],
            lead,
        )  # fmt: skip
