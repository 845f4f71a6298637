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
    selected_beta,
    verdict,
)
from lre_pl.experiments.beta_study.questions.differences import difference
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
        "where tuning β helps the plain LRE, a held-fixed Jacobian's LRE needs a smaller dev-chosen β than the "
        "plain one (per bundle, its 95 % interval above 0)"
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
        """The scan's numbers per way (:class:`ScanQuestion`) with its mean ‖W s‖, and per way its
        bundles' test faithfulness at β = 1 and at the dev-chosen β and that β (``per_bundle``: {way:
        {measure: {(relation, trial): value}}}, for the verdict's intervals)."""
        numbers = super().summarize(rows, rule)
        per_bundle = {way: {"beta_1": {}, "chosen": {}, "chosen_beta": {}} for way in numbers["variants"]}
        for (relation, trial, way), values in selected_beta(rows, self.name, rule).items():
            for measure, by_key in per_bundle[way].items():
                by_key[relation, trial] = values[measure]
        numbers["per_bundle"] = per_bundle
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
        """Inconclusive unless tuning β helps the plain LRE (its test faithfulness at the dev-chosen β −
        at β = 1, per bundle, has a 95 % interval above 0): else there is no β to remove. Then confirmed
        when some way's dev-chosen β is below the plain one's (the interval of plain − way above 0),
        refuted when every way's is above it, else inconclusive."""
        variants, per_bundle = numbers["variants"], numbers["per_bundle"]
        if set(variants) != set(WAYS):
            return Verdict("inconclusive", f"rows of {sorted(variants)} only: every way needs its rows")
        plain = per_bundle["plain"]
        tuning = difference(plain["chosen"], plain["beta_1"], "faithfulness at the dev-chosen β − at β = 1")
        plain_text = f"the plain LRE's dev-chosen β has median {variants['plain']['median_beta']:.2f}; {tuning.words()}"
        if not tuning.above:
            return Verdict(
                "inconclusive", f"tuning β does not help the plain LRE here, nothing to remove: {plain_text}"
            )
        parts = {
            way: difference(plain["chosen_beta"], values["chosen_beta"], f"{way}: plain's dev-chosen β − its", "+.2f")
            for way, values in per_bundle.items()
            if way != "plain"
        }  # fmt: skip
        said = "; ".join(part.words() for part in parts.values()) + f"; {plain_text}"
        lower = [way for way, part in parts.items() if part.above]
        if lower:
            single = [way for way in lower if way != "attention+norms"]
            where = " and ".join(single) if single else "attention and the norms together (neither alone)"
            return Verdict("confirmed", f"holding {where} fixed lowers the β the LRE needs: {said}")
        if all(part.below for part in parts.values()):
            return Verdict("refuted", f"holding any part fixed raises the β the LRE needs: {said}")
        return Verdict("inconclusive", f"no part held fixed lowers β detectably: {said}")
