"""2. Where β acts: on W s, on b (as 1/β), or on both."""

from __future__ import annotations

import torch

from lre_pl.experiments.beta_study.context import StudyContext
from lre_pl.experiments.beta_study.questions.base import (
    Findings,
    HeadlineLine,
    Numbers,
    ScanQuestion,
    difference_words,
    number,
    register,
    section,
    verdict,
)
from lre_pl.lre.operator import BETA_ACTS_ON, relation_readout
from lre_pl.protocol.selection import SelectionRule

GAP_METRIC = "max_logit_gap_projection_vs_bias"


@register
class WhereBeta(ScanQuestion):
    """β on W s (``projection``, the paper), 1/β on b (``bias``), or on both (``both``: β (W s + b));
    and the largest logit difference between the first two, which a scale-invariant final norm makes
    zero up to its ε."""

    name = "where_beta"
    number = 2
    title = "Where β acts: on W s, on b (as 1/β), or on both"
    headline = (
        HeadlineLine(130, "max logit gap, β on W s against 1/β on b",
                     lambda m: number(m, "where_beta", "max_logit_gap", fmt=".1e")),
    )  # fmt: skip

    def rows(self, context: StudyContext) -> list[dict]:
        projection, bias = context.projection_and_bias()
        layer = str(context.layer)
        rows = [
            row
            for where in BETA_ACTS_ON
            for row in context.scan(
                lambda beta, where=where: relation_readout(projection, bias, beta, where),
                kind=self.name, estimator=where, layer=layer,
            )
        ]  # fmt: skip
        lm = context.decoder.lm
        with torch.no_grad():  # decode(β W s + b) against decode(W s + b / β): equal but for the norm's ε
            gap = max(
                (lm.decode(relation_readout(projection, bias, beta, "projection").to(lm.device))
                 - lm.decode(relation_readout(projection, bias, beta, "bias").to(lm.device))).abs().max().item()
                for beta in context.rule.betas if beta > 0
            )  # fmt: skip
        rows.append(
            context.row(
                kind=self.name, split="all", metric=GAP_METRIC, value=gap, n=len(context), layer=layer
            )
        )
        return rows

    def summarize(self, rows: list[dict], rule: SelectionRule) -> Numbers:
        gaps = [row["value"] for row in rows if row["metric"] == GAP_METRIC]
        return super().summarize(rows, rule) | {"max_logit_gap": max(gaps, default=float("nan"))}

    def render(self, numbers: Numbers, findings: Findings) -> str:
        variants = numbers["variants"]
        text = (
            "With a scale-invariant final norm, decode(β W s + b) = decode(W s + b / β): the largest logit "
            f"difference between the two over every relation and β > 0 is {numbers['max_logit_gap']:.2e} (the "
            "norm's ε)"
        )
        if "projection" in variants and "bias" in variants:
            text += (
                "; at the β each chooses on dev, 1/β on b minus β on W s: "
                + difference_words(
                    variants["bias"]["chosen_by_bundle"], variants["projection"]["chosen_by_bundle"]
                )
                + " (1/β on b has no β = 0, which the grid offers β on W s: the two dev choices can differ there)"
            )
        return section(self.table(variants), verdict(
            text + ". Scaling both (β (W s + b)) changes nothing: amplifying the projection and shrinking the "
            "bias are one move."
        ))  # fmt: skip
