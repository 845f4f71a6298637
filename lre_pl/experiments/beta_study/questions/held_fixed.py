"""14. Where the flatness sits: the LRE of Jacobians with attention and/or the norms held fixed."""

from __future__ import annotations

import torch

from lre_pl.experiments.beta_study.context import StudyContext
from lre_pl.experiments.beta_study.questions.base import (
    Findings,
    Numbers,
    ScanQuestion,
    Verdict,
    register,
    section,
    verdict,
)
from lre_pl.lm.jacobian import compute_jacobians
from lre_pl.lre.operator import relation_readout
from lre_pl.protocol.markdown import nanmean
from lre_pl.protocol.selection import SelectionRule

#: The ways J_i is computed (the rows' ``estimator``) -> the parts held fixed.
WAYS = {
    "plain": frozenset(),
    "attention": frozenset({"attention"}),
    "norms": frozenset({"norms"}),
    "attention+norms": frozenset({"attention", "norms"}),
}
#: The rows' metric of ‖W s‖, per evaluated sample.
NORM_METRIC = "norm_Ws"
#: Faithfulness closer than this is the same (a few samples of a relation's ~25 test samples).
MARGIN = 0.05
#: A dev-chosen β within this of 1 is "β ≈ 1" (one step of the paper's grid of 0.25).
NEAR_ONE = 0.25


def mean_jacobian_operator(
    jacobians: torch.Tensor, subject_states: torch.Tensor, output_states: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [d, d], b [d]) of the LRE of these J_i: W = mean_i J_i, b = mean_i (o_i − J_i s_i).
    ``jacobians`` [n, d, d], ``subject_states`` [n, d] s_i, ``output_states`` [n, d] o_i."""
    return jacobians.mean(0), (output_states - torch.einsum("nij,nj->ni", jacobians, subject_states)).mean(0)


def held_fixed_jacobians(context: StudyContext, parts: frozenset[str]) -> torch.Tensor:
    """J_i [n, d, d] of the training samples at the study's layer with ``parts`` held fixed (the plain
    ones: the context's, computed once per bundle)."""
    if not parts:
        return context.jacobians
    prompts = [item.prompt for item in context.train_prompts]
    result = compute_jacobians(context.decoder.lm, prompts, [context.layer], held_fixed=parts)
    return result.jacobians[context.layer].detach().float().cpu()


@register
class HeldFixed(ScanQuestion):
    """The LRE (W = mean J_i, b = mean (o_i − J_i s_i)) of Jacobians taken four ways: plain, with the
    attention probabilities held fixed, with every block norm's scale held fixed, and with both: per way
    ‖W s‖ of the evaluated samples and faithfulness over the β grid. If the map from subject to object
    is flat at the real states (tangent < secant) because of one part's saturation, holding that part
    fixed steepens J and removes β. Three more Jacobian passes per bundle at the study's layer."""

    name = "held_fixed"
    number = 14
    costly = True
    title = "Where the flatness sits: Jacobians with attention and the norms held fixed"
    hypothesis = (
        "the flatness (tangent < secant) sits in attention / in the norms: holding them fixed removes β"
    )
    prediction = (
        "a held-fixed Jacobian's dev-chosen β ≈ 1 and its faithfulness at β = 1 reaches the plain LRE's "
        "tuned faithfulness"
    )

    def rows(self, context: StudyContext) -> list[dict]:
        return [row for way, parts in WAYS.items() for row in self.way_rows(context, way, parts)]

    def way_rows(self, context: StudyContext, way: str, parts: frozenset[str]) -> list[dict]:
        """‖W s‖ and the β scan of the LRE of J_i with ``parts`` held fixed (``way``: its rows' estimator)."""
        b, i = context.bundle, context.bundle.layer_index(context.layer)
        weight, bias = mean_jacobian_operator(
            held_fixed_jacobians(context, parts), b.train_subject_states[:, i], b.train_output_states
        )
        projection = context.projection(weight)  # [known, d] W s
        fields = {"kind": self.name, "estimator": way, "layer": str(context.layer)}
        return [
            *context.split_rows(projection.norm(dim=-1)[:, None], [NORM_METRIC], **fields),
            *context.scan(lambda beta: relation_readout(projection, bias, beta), **fields),
        ]

    def summarize(self, rows: list[dict], rule: SelectionRule) -> Numbers:
        numbers = super().summarize(rows, rule)
        for way, values in numbers["variants"].items():
            values[NORM_METRIC] = nanmean(
                row["value"] for row in rows
                if row["estimator"] == way and row["metric"] == NORM_METRIC and row["split"] == "all"
            )  # fmt: skip
        return numbers

    def render(self, numbers: Numbers, findings: Findings) -> str:
        variants = numbers["variants"]
        norms = "; ".join(f"{way} {values[NORM_METRIC]:.2f}" for way, values in variants.items())
        judged = self.judge(numbers)
        return section(
            self.table(variants),
            f"\nMean ‖W s‖ of the evaluated samples: {norms}.\n" + verdict(f"{judged.word}: {judged.why}"),
        )

    def measured(self, numbers: Numbers) -> str:
        variants = numbers["variants"]
        cells = [
            f"{way} {values['beta_1']:.2f} at β = 1, β {values['median_beta']:.2f}"
            + (f" (tuned {values['chosen']:.2f})" if way == "plain" else "")
            for way, values in variants.items()
        ]
        return "; ".join(cells) or "no rows"

    def judge(self, numbers: Numbers) -> Verdict:
        variants = numbers["variants"]
        if set(variants) != set(WAYS):
            return Verdict("inconclusive", f"rows of {sorted(variants)} only: every way needs its rows")
        plain = variants["plain"]
        gain = plain["chosen"] - plain["beta_1"]  # what tuning β buys the plain LRE
        if gain < MARGIN or abs(plain["median_beta"] - 1) <= NEAR_ONE:  # tuning buys nothing, or β ≈ 1
            return Verdict("inconclusive", f"the plain LRE needs no β here (β ≈ {plain['median_beta']:.2f}, "
                           f"tuning gains {gain:+.3f}): nothing to remove")  # fmt: skip
        held = {way: values for way, values in variants.items() if way != "plain"}
        removes = [
            way for way, values in held.items()
            if abs(values["median_beta"] - 1) <= NEAR_ONE and values["beta_1"] >= plain["chosen"] - MARGIN
        ]  # fmt: skip
        moves = [
            way for way, values in held.items()
            if values["beta_1"] - plain["beta_1"] >= MARGIN or plain["median_beta"] - values["median_beta"] >= 2 * NEAR_ONE
        ]  # fmt: skip
        figures = "; ".join(
            f"{way}: {v['beta_1']:.3f} at β = 1, median β {v['median_beta']:.2f}" for way, v in held.items()
        )
        plain_text = (
            f"plain LRE {plain['beta_1']:.3f} at β = 1, {plain['chosen']:.3f} at its dev-chosen β (median "
            f"{plain['median_beta']:.2f})"
        )
        if removes:
            single = [way for way in removes if way != "attention+norms"]
            where = " and ".join(single) if single else "attention and the norms together (neither alone)"
            return Verdict("confirmed", f"holding {where} fixed removes β (β within {NEAR_ONE} of 1 and "
                           f"faithfulness at β = 1 within {MARGIN} of the tuned plain LRE): {figures}; {plain_text}")  # fmt: skip
        if not moves:
            return Verdict("refuted", f"no part held fixed moves β or faithfulness at β = 1 (by {MARGIN} or "
                           f"β by {2 * NEAR_ONE}): {figures}; {plain_text}")  # fmt: skip
        return Verdict("inconclusive", f"{', '.join(moves)} held fixed move β or faithfulness at β = 1, but "
                       f"none removes β: {figures}; {plain_text}")  # fmt: skip
