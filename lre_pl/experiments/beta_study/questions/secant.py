"""11. Secant versus tangent: the chord Jacobian."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict

import torch

from lre_pl.experiments.beta_study.context import StudyContext
from lre_pl.experiments.beta_study.questions.base import (
    NAN,
    Findings,
    Numbers,
    ScanQuestion,
    Verdict,
    figure_name,
    register,
    section,
    selected_beta,
    verdict,
)
from lre_pl.experiments.beta_study.questions.differences import difference, over_trials, weigh
from lre_pl.lre.chord import ChordJacobian, chord_steps
from lre_pl.lre.operator import relation_readout
from lre_pl.protocol.markdown import markdown_table, mean_std_cell, nanmean
from lre_pl.protocol.selection import SelectionRule

#: The per-pair metrics of the profile (one row per ordered training pair).
PAIR_METRICS = ("secant_over_tangent", "secant_over_mean_W", "recovered_share", "mean_W_profile")
#: The per-bundle metrics of W_chord against the LRE (medians over bundles in the summary).
BUNDLE_METRICS = ("projection_norm_ratio", "bias_relative_difference")
#: The stem of the profile figure's file name (:func:`~lre_pl.experiments.beta_study.questions.base.figure_name`).
FIGURE = "secant_profile"
#: The prefix of a profile row's metric: ``profile@<α>`` holds uᵀ J(s(α)) Δs / ‖o(1) − o(0)‖.
PROFILE = "profile@"


def profile_means(rows: list[dict]) -> dict[str, dict]:
    """{"profile": {category: {α: mean profile}}, "mean_W_line": {category: mean uᵀ W Δs / ‖Δo‖}} over the
    pairs of ``rows``."""
    profile, line = defaultdict(lambda: defaultdict(list)), defaultdict(list)
    for row in rows:
        if row["metric"] == "mean_W_profile":
            line[row["category"]].append(row["value"])
        if row["metric"].startswith(PROFILE):
            profile[row["category"]][float(row["metric"][len(PROFILE) :])].append(row["value"])
    return {
        "profile": {
            c: {a: statistics.mean(v) for a, v in sorted(by_alpha.items())} for c, by_alpha in profile.items()
        },
        "mean_W_line": {category: statistics.mean(values) for category, values in line.items()},
    }


def plot_profiles(model: str, numbers: dict):
    """Per category, the mean normalised profile uᵀ J(s(α)) Δs / ‖Δo‖ against α, beside the mean-W line
    (``numbers``: :func:`profile_means`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = sorted(numbers["profile"])
    figure, axes = plt.subplots(1, len(categories), figsize=(3.2 * len(categories), 2.8), squeeze=False)
    for axis, category in zip(axes.flat, categories):
        profile = sorted(numbers["profile"][category].items())
        axis.plot([a for a, _ in profile], [v for _, v in profile], marker="o", label="uᵀ J(s(α)) Δs / ‖Δo‖")
        axis.axhline(
            numbers["mean_W_line"][category], color="tab:red", linestyle="--", label="uᵀ W Δs / ‖Δo‖"
        )
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_title(category, fontsize=8)
        axis.set_xlabel("α", fontsize=7)
        axis.tick_params(labelsize=6)
    axes.flat[0].legend(fontsize=6)
    figure.suptitle(  # two lines: one category's figure is only 3.2 inches wide
        f"{model}: J along the segments between\ntraining subjects (line at 1: the secant)", fontsize=8
    )
    figure.tight_layout(rect=(0, 0, 1, 0.9))
    return figure


@register
class Secant(ScanQuestion):
    """Along the segments s(α) = s_i + α (s_j − s_i) between training subjects (J taken in prompt i):
    the secant ‖o(1) − o(0)‖ against the tangent ‖J(s_i) Δs‖ and against the LRE's ‖W Δs‖, the profile
    uᵀ J(s(α)) Δs / ‖o(1) − o(0)‖ on the Gauss–Legendre nodes, and the chord Jacobian W_chord (the mean of J
    over the segments' nodes, applied to vectors by forward-mode products, never formed) read over the β
    grid beside the LRE."""

    name = "secant"
    number = 11
    costly = True
    title = "Secant versus tangent: the chord Jacobian"
    hypothesis = "The local Jacobian (the tangent) underestimates the slope between subjects (the secant): β ≈ secant / tangent"
    prediction = (
        "secant / tangent > 1, and W_chord, whose scale is the secant's, needs a smaller dev-chosen β than the "
        "LRE (each per bundle, its 95 % interval above 0)"
    )

    def rows(self, context: StudyContext) -> list[dict]:
        b, i, layer = context.bundle, context.bundle.layer_index(context.layer), str(context.layer)
        s, o = b.train_subject_states[:, i], b.train_output_states  # [n, d]
        prompts = [item.prompt for item in context.train_prompts]
        chord = ChordJacobian(context.settings.quadrature_nodes)(
            context.decoder.lm, prompts, context.layer, s, o
        )
        n, nodes = len(s), len(chord.nodes)

        started = time.perf_counter()
        alphas = torch.cat(
            [torch.zeros(1, dtype=chord.nodes.dtype), chord.nodes, torch.ones(1, dtype=chord.nodes.dtype)]
        )
        outputs, slopes = chord.along_segments(alphas)  # [n, n - 1, K + 2, d] o(α) and J(s(α)) Δs
        profile_seconds = time.perf_counter() - started
        change = outputs[:, :, -1] - outputs[:, :, 0]  # [n, n - 1, d] o(1) − o(0)
        secant = change.norm(dim=-1)  # [n, n - 1]
        direction = change / secant[..., None]  # u
        mean_w = chord_steps(s) @ b.weights[i].T  # [n, n - 1, d] W Δs
        quadrature = torch.einsum("k,ijkd->ijd", chord.weights.float(), slopes[:, :, 1:-1])
        along = torch.einsum("ijad,ijd->ija", slopes, direction) / secant[..., None]  # [n, n - 1, K + 2]
        per_pair = {
            "secant_over_tangent": secant / slopes[:, :, 0].norm(dim=-1),
            "secant_over_mean_W": secant / mean_w.norm(dim=-1),
            "recovered_share": torch.einsum("ijd,ijd->ij", quadrature, direction) / secant,
            "mean_W_profile": torch.einsum("ijd,ijd->ij", mean_w, direction) / secant,
        }
        per_pair |= {f"{PROFILE}{alpha:.6f}": along[:, :, a] for a, alpha in enumerate(alphas.tolist())}
        rows = [
            context.row(
                kind=self.name, estimator="chord", layer=layer, split="train", metric=metric, value=value, n=1
            )
            for metric, values in per_pair.items()
            for value in values.flatten().tolist()
        ]

        started = time.perf_counter()
        projection, bias = chord.readout_parts(b.test_states(context.layer)[context.known])
        product_seconds = time.perf_counter() - started
        products = n * (n - 1) * nodes * (n + len(context))  # points x vectors
        lre_projection, lre_bias = context.projection_and_bias()
        # How much longer W_chord s is than W s (the β W_chord builds in, were it W scaled), and how far b moved.
        scale = (projection.norm(dim=-1) / lre_projection.norm(dim=-1)).mean().item()
        moved = ((bias - lre_bias).norm() / lre_bias.norm()).item()
        per_bundle = [
            ("seconds_products", product_seconds, products),
            ("seconds_profile", profile_seconds, n * (n - 1) * (nodes + 2)),
            ("projection_norm_ratio", scale, len(context)),
            ("bias_relative_difference", moved, 1),
        ]
        rows += [
            context.row(
                kind=self.name,
                estimator="chord",
                layer=layer,
                split="all",
                metric=metric,
                value=value,
                n=count,
            )
            for metric, value, count in per_bundle
        ]
        rows += context.scan(
            lambda beta: relation_readout(projection, bias, beta),
            kind=self.name,
            estimator="chord",
            layer=layer,
        )
        return rows + context.scan(
            lambda beta: relation_readout(lre_projection, lre_bias, beta),
            kind=self.name,
            estimator="lre",
            layer=layer,
        )

    def summarize(self, rows: list[dict], rule: SelectionRule) -> Numbers:
        """The scan's numbers per variant (chord, lre), and: the pooled medians of the per-pair ratios,
        the mean recovered share, per category the mean profile at each α and the mean-W line, per
        relation the median secant/tangent beside the LRE's dev-chosen β, and the mean seconds."""
        numbers = super().summarize(rows, rule)
        pairs, per_relation, seconds = defaultdict(list), defaultdict(list), defaultdict(list)
        for row in rows:
            metric = row["metric"]
            if metric in PAIR_METRICS + BUNDLE_METRICS:
                pairs[metric].append(row["value"])
            if metric == "secant_over_tangent":
                per_relation[row["relation"], row["trial"]].append(row["value"])
            if metric.startswith("seconds_"):
                seconds[metric].append(row["value"])
        chosen = selected_beta(rows, self.name, rule)
        ratios = {key: statistics.median(values) for key, values in per_relation.items()}
        numbers |= {
            **{  # NaN where no bundle has rows (every bundle too small): the section still renders
                metric: statistics.median(pairs[metric]) if pairs[metric] else NAN
                for metric in PAIR_METRICS + BUNDLE_METRICS
                if metric != "recovered_share"
            },
            "recovered_share": nanmean(pairs["recovered_share"]),
            "recovered_share_min": min(pairs["recovered_share"], default=NAN),
            **profile_means(rows),
            "per_bundle": {  # {(relation, trial): value}: what the verdict's intervals resample
                "secant_over_tangent": ratios,
                **{
                    f"{variant}_beta": {
                        (relation, trial): values["chosen_beta"]
                        for (relation, trial, name), values in chosen.items()
                        if name == variant
                    }
                    for variant in ("lre", "chord")
                },
            },
            "seconds": {metric: statistics.mean(values) for metric, values in seconds.items()},
        }
        return numbers

    def measured(self, numbers: Numbers) -> str:
        chord, lre = numbers["variants"].get("chord", {}), numbers["variants"].get("lre", {})
        return (
            f"secant/tangent {numbers.get('secant_over_tangent', NAN):.2f} (LRE's β {lre.get('median_beta', NAN):.2f}); "
            f"W_chord: β {chord.get('median_beta', NAN):.2f}, faithfulness at β = 1 {chord.get('beta_1', NAN):.3f} "
            f"(LRE tuned {lre.get('chosen', NAN):.3f})"
        )

    def judge(self, numbers: Numbers) -> Verdict:
        """Confirmed when secant / tangent − 1 and the LRE's dev-chosen β − W_chord's are both above 0
        (95 % intervals over bundles); refuted when either is below 0; else inconclusive."""
        per_bundle = numbers["per_bundle"]
        chord, lre = numbers["variants"].get("chord", {}), numbers["variants"].get("lre", {})
        lead = (
            f"the secant is {numbers['secant_over_tangent']:.2f}× the tangent (median over pairs); dev-chosen β "
            f"median {chord.get('median_beta', NAN):.2f} (W_chord) against {lre.get('median_beta', NAN):.2f} (LRE)"
        )
        return weigh([
            difference(per_bundle["secant_over_tangent"], 1.0, "secant / tangent − 1", "+.2f"),
            difference(per_bundle["lre_beta"], per_bundle["chord_beta"], "the LRE's dev-chosen β − W_chord's", "+.2f"),
        ], lead)  # fmt: skip

    def render(self, numbers: Numbers, findings: Findings) -> str:
        pairs = markdown_table(
            ["secant / tangent (median)", "secant / ‖W Δs‖ (median)", "share recovered by the quadrature (mean [min])",
             "‖W_chord s‖ / ‖W s‖ (median)", "seconds of W_chord products per bundle",
             "seconds of the profile per bundle"],
            [[f"{numbers['secant_over_tangent']:.2f}", f"{numbers['secant_over_mean_W']:.2f}",
              f"{numbers['recovered_share']:.4f} [{numbers['recovered_share_min']:.4f}]",
              f"{numbers['projection_norm_ratio']:.2f}",
              f"{numbers['seconds'].get('seconds_products', NAN):.1f}",
              f"{numbers['seconds'].get('seconds_profile', NAN):.1f}"]],
        )  # fmt: skip
        per_bundle = numbers["per_bundle"]
        lre_beta = over_trials(per_bundle["lre_beta"])
        relations = markdown_table(
            ["relation", "secant / tangent (median over pairs; mean ± std over trials)",
             "LRE's dev-chosen β (mean ± std over trials)"],
            [[relation, mean_std_cell(ratios), mean_std_cell(lre_beta.get(relation, []))]
             for relation, ratios in over_trials(per_bundle["secant_over_tangent"]).items()],
        )  # fmt: skip
        word, why = self.judge(numbers)
        note = (
            f"\n{relations}\nProfiles per category beside the mean-W line: `{figure_name(findings.model, FIGURE)}`. "
            "The share recovered is a check of the numerics (the fundamental theorem makes it 1).\n"
        )
        return section(f"{self.table(numbers['variants'])}\n{pairs}", note + verdict(f"{word}: {why}."))

    def figures(self, rows: list[dict], model: str) -> dict:
        if not any(row["metric"].startswith(PROFILE) for row in rows):
            return {}
        return {figure_name(model, FIGURE): plot_profiles(model, profile_means(rows))}
