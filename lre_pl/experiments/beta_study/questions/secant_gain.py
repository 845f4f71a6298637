"""13. The secant gain: the least-squares β between real subjects, against the dev-chosen β.

Hypothesis 1 of issue 15 says that the local Jacobian (the tangent at each subject) is flatter than the
map between subjects (the secant), and that β is roughly the ratio. Its cheapest test reads only the
sweep's bundles: fit one scalar gain of the mean W between real subjects, β_LS = Σ⟨Δo, W Δs⟩ / Σ‖W Δs‖²
(Δs = s_k − s̄, Δo = o_k − ō over the estimation and dev samples, never test), and the same gain along
each of W's top singular directions (if they differ, one scalar is the wrong shape).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

import torch

from lre_pl.experiments.beta_study.context import StudyContext, SweepStudy
from lre_pl.experiments.beta_study.questions.base import (
    NAN,
    AcrossBundlesQuestion,
    Findings,
    Numbers,
    Verdict,
    bundles_of,
    figure_name,
    register,
    section,
    verdict,
)
from lre_pl.experiments.beta_study.questions.differences import difference, weigh
from lre_pl.protocol.correlation import pearson, spearman
from lre_pl.protocol.markdown import markdown_table, mean_std_cell
from lre_pl.protocol.selection import SelectionRule

#: W's top singular directions along which the gain is fitted on its own.
DIRECTIONS = 5


def secant_gains(
    weight: torch.Tensor, delta_s: torch.Tensor, delta_o: torch.Tensor, directions: int = DIRECTIONS
) -> tuple[float, list[float], list[float]]:
    """(β_LS, gains, shares): the least-squares gain of ``delta_o`` [m, d] on W ``delta_s`` [m, d]
    (``weight`` [d, d] W), then per top singular direction k of W = U Σ Vᵀ (at most ``directions``)
    gain_k = Σ (u_kᵀΔo)(σ_k v_kᵀΔs) / Σ (σ_k v_kᵀΔs)² and share_k, its part of Σ‖W Δs‖².

    β_LS is the share-weighted mean of the gains over all d directions, so equal gains mean one scalar
    fits; the signs of u_k and v_k flip together, so no gain depends on the SVD's sign choice.
    """
    weight, delta_s, delta_o = weight.double(), delta_s.double(), delta_o.double()
    projected = delta_s @ weight.T  # [m, d] W Δs
    total = projected.square().sum()
    left, singular, right = torch.linalg.svd(weight)  # [d, d], [d], [d, d] (right: Vᵀ)
    k = min(directions, len(singular))
    along = (delta_s @ right[:k].T) * singular[:k]  # [m, k] σ_k v_kᵀ Δs
    out = delta_o @ left[:, :k]  # [m, k] u_kᵀ Δo
    beta_ls = ((delta_o * projected).sum() / total).item()
    gains = ((out * along).sum(0) / along.square().sum(0)).tolist()
    return beta_ls, gains, (along.square().sum(0) / total).tolist()


def secant_samples(context: StudyContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(s [m, d] at the context's layer, o [m, d]) of the estimation samples and the dev samples: the
    samples β_LS may see (the test samples report the dev-chosen β, so they stay out)."""
    b, i = context.bundle, context.bundle.layer_index(context.layer)
    dev = context.known[context.splits["dev"]]  # [n_dev] indices into the bundle's test samples
    s = torch.cat([b.train_subject_states[:, i], b.test_states(context.layer)[dev]])
    return s, torch.cat([b.train_output_states, b.test_output_states[dev]])


def secant_gain_rows(context: StudyContext, chosen_beta: float, name: str = "secant_gain") -> list[dict]:
    """One bundle's rows: β_LS, the gain and share of each top direction of W, and the sweep's
    dev-chosen β (``chosen_beta``) at the context's layer."""
    s, o = secant_samples(context)
    weight = context.bundle.weights[context.bundle.layer_index(context.layer)]
    beta_ls, gains, shares = secant_gains(weight, s - s.mean(0), o - o.mean(0))
    fields = dict(kind=name, layer=str(context.layer), n=len(s))
    rows = [context.row(estimator="beta_ls", split="train+dev", metric="gain", value=beta_ls, **fields)]
    for k, (gain, share) in enumerate(zip(gains, shares), start=1):
        rows += [
            context.row(estimator=f"direction_{k}", split="train+dev", metric=metric, value=value, **fields)
            for metric, value in (("gain", gain), ("share", share))
        ]
    fields["n"] = len(context.splits["dev"])
    return rows + [
        context.row(estimator="lre", selection="dev", split="dev", beta=chosen_beta, metric="dev_chosen_beta",
                    value=chosen_beta, **fields)
    ]  # fmt: skip


def plot_secant_gain(model: str, points: list[dict], r: float, rho: float):
    """β_LS against the dev-chosen β, one point per bundle coloured by category, and the line y = x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 4.5))
    by_category = defaultdict(list)
    for point in points:
        by_category[point["category"]].append(point)
    for category, group in sorted(by_category.items()):
        axis.scatter([p["beta_ls"] for p in group], [p["chosen_beta"] for p in group], label=category, s=25)
    values = [v for p in points for v in (p["beta_ls"], p["chosen_beta"]) if not math.isnan(v)]
    low, high = min(values + [0.0]), max(values + [1.0])
    axis.plot([low, high], [low, high], color="grey", linewidth=0.8, label="y = x")
    axis.set_xlabel("β_LS (secant gain of the mean W, estimation + dev samples)")
    axis.set_ylabel("the LRE's dev-chosen β")
    axis.set_title(f"{model}: r = {r:.2f}, ρ = {rho:.2f} over {len(points)} relations", fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


@register
class SecantGain(AcrossBundlesQuestion):
    """β_LS of each bundle at its dev-chosen layer beside the sweep's dev-chosen β there. Across
    bundles only because the exact dev-chosen β is the sweep's (:attr:`SweepStudy.points`): a study
    capped below the sweep's samples would choose on fewer dev samples. Reads bundles alone: no
    Jacobian, no forward pass."""

    name = "secant_gain"
    number = 13
    title = "The secant gain: β fitted between real subjects (β_LS) against the dev-chosen β"
    hypothesis = "β is the gain of the secant between real subjects: β_LS predicts the dev-chosen β"
    prediction = "β_LS > 1, and β_LS is closer to the dev-chosen β than 1 is (each per bundle, its 95 % interval above 0)"

    def rows(self, study: SweepStudy) -> list[dict]:
        return [
            row
            for key, context in study.usable(study.keys).items()
            for row in secant_gain_rows(context, study.points[key][1], self.name)
        ]

    def covers(self, rows: list[dict], study: SweepStudy) -> bool:
        return bundles_of(rows, "beta_ls") == set(study.usable(study.keys))

    def summarize(self, rows: list[dict], rule: SelectionRule) -> Numbers:
        """{points: per bundle β_LS, the dev-chosen β, the direction gains and their spread; their
        correlations over bundles; medians}."""
        by_bundle = defaultdict(lambda: {"gains": {}})
        for row in rows:
            point = by_bundle[row["relation"], row["trial"]]
            point["category"] = row["category"]
            if row["estimator"] == "beta_ls":
                point["beta_ls"] = row["value"]
            elif row["metric"] == "dev_chosen_beta":
                point["chosen_beta"] = row["value"]
            elif row["metric"] == "gain":
                point["gains"][int(row["estimator"].removeprefix("direction_"))] = row["value"]
        points = []
        for (relation, trial), point in sorted(by_bundle.items(), key=str):
            gains = [point["gains"][k] for k in sorted(point["gains"])]
            spread = (max(gains) - min(gains)) / abs(point["beta_ls"]) if gains else NAN
            points.append({"relation": relation, "trial": trial, "category": point["category"],
                           "beta_ls": point["beta_ls"], "chosen_beta": point["chosen_beta"],
                           "direction_gains": gains, "spread": spread})  # fmt: skip
        beta_ls, chosen = [p["beta_ls"] for p in points], [p["chosen_beta"] for p in points]
        return {
            "points": points,
            "n": len(points),
            "pearson": pearson(beta_ls, chosen),
            "spearman": spearman(beta_ls, chosen),
            "median_beta_ls": statistics.median(beta_ls) if points else NAN,
            "median_chosen_beta": statistics.median(chosen) if points else NAN,
            "median_spread": statistics.median(p["spread"] for p in points) if points else NAN,
        }

    def render(self, numbers: Numbers, findings: Findings) -> str:
        points = numbers["points"]
        directions = max((len(p["direction_gains"]) for p in points), default=0)
        headings = ["relation", "category", "β_LS", "dev-chosen β",
                    *(f"gain along σ_{k}" for k in range(1, directions + 1))]  # fmt: skip
        trials = {}  # relation -> [its bundles' points]
        for point in points:
            trials.setdefault(point["relation"], []).append(point)
        table = [
            [relation, group[0]["category"], mean_std_cell([p["beta_ls"] for p in group]),
             mean_std_cell([p["chosen_beta"] for p in group]),
             *(mean_std_cell([p["direction_gains"][k] for p in group if k < len(p["direction_gains"])])
               for k in range(directions))]
            for relation, group in sorted(trials.items())
        ]  # fmt: skip
        found = self.judge(numbers)
        return section(markdown_table(headings, table), (
            f"\nPer relation: mean ± std over its trials. β_LS = Σ⟨Δo, W Δs⟩ / Σ‖W Δs‖² over the estimation and dev "
            f"samples (Δ: from their mean), W the LRE's mean W at the dev-chosen layer; the gains along W's top "
            f"singular directions likewise. Figure: `{figure_name(findings.model, self.name)}`. The verdict: "
            f"confirmed when β_LS − 1 and |dev-chosen β − 1| − |dev-chosen β − β_LS| (per bundle) both have a 95 % "
            f"bootstrap interval above 0; refuted when one lies below 0; else inconclusive.\n"
            + verdict(f"{found.word}: {found.why}")
        ))  # fmt: skip

    def figures(self, rows: list[dict], model: str) -> dict:
        if not rows:
            return {}
        numbers = self.summarize(rows, SelectionRule([1.0]))  # the rule plays no part in this summary
        return {
            figure_name(model, self.name): plot_secant_gain(
                model, numbers["points"], numbers["pearson"], numbers["spearman"]
            )
        }

    def measured(self, numbers: Numbers) -> str:
        return (
            f"β_LS median {numbers['median_beta_ls']:.2f} (dev-chosen β {numbers['median_chosen_beta']:.2f}); "
            f"r = {numbers['pearson']:.2f}, ρ = {numbers['spearman']:.2f} over {numbers['n']} relations; "
            f"direction gains span {numbers['median_spread']:.2f} × β_LS"
        )

    def judge(self, numbers: Numbers) -> Verdict:
        """Confirmed when β_LS − 1 and how much closer β_LS is to the dev-chosen β than 1 is are both
        above 0 (95 % intervals over bundles); refuted when either is below 0; else inconclusive."""
        beta_ls = {(p["relation"], p["trial"]): p["beta_ls"] for p in numbers["points"]}
        chosen = {(p["relation"], p["trial"]): p["chosen_beta"] for p in numbers["points"]}
        error_of_1 = {key: abs(beta - 1) for key, beta in chosen.items()}
        error_of_ls = {key: abs(beta - beta_ls[key]) for key, beta in chosen.items()}
        lead = (
            f"median β_LS {numbers['median_beta_ls']:.2f} against the dev-chosen β's {numbers['median_chosen_beta']:.2f}, "
            f"r = {numbers['pearson']:.2f} and ρ = {numbers['spearman']:.2f} over {numbers['n']} bundles, direction "
            f"gains spanning {numbers['median_spread']:.2f} × β_LS"
        )  # fmt: skip
        return weigh([
            difference(beta_ls, 1.0, "β_LS − 1", "+.2f"),
            difference(error_of_1, error_of_ls, "|dev-chosen β − 1| − |dev-chosen β − β_LS|", "+.2f"),
        ], lead)  # fmt: skip
