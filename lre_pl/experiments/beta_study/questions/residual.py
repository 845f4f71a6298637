"""7. The linearisation residual ε = o − (W s + b) on known test samples."""

from __future__ import annotations

from collections import defaultdict

import torch

from lre_pl.experiments.beta_study.context import StudyContext
from lre_pl.experiments.beta_study.questions.base import (
    NAN,
    Findings,
    HeadlineLine,
    Numbers,
    PerBundleQuestion,
    number,
    register,
    section,
    verdict,
)
from lre_pl.lre.operator import relation_readout
from lre_pl.protocol.markdown import markdown_table, nanmean
from lre_pl.protocol.selection import SelectionRule


@register
class Residual(PerBundleQuestion):
    """ε = o − (W s + b) on the known test samples: ‖ε‖ against ‖b‖ and ‖W s‖, and the share of ‖ε‖²
    along b (what shrinking b can remove)."""

    name = "residual"
    number = 7
    title = "The linearisation residual ε = o − (W s + b) on known test samples"
    headline = (
        HeadlineLine(120, "‖ε‖ / ‖b‖, and the share of ‖ε‖² along b",
                     lambda m: f"{number(m, 'residual', 'residual_over_bias', fmt='.2f')}, "
                               f"{number(m, 'residual', 'residual_share_along_bias', fmt='.0%')}"),
    )  # fmt: skip

    def rows(self, context: StudyContext) -> list[dict]:
        projection, bias = context.projection_and_bias()
        outputs = context.bundle.test_output_states[context.known]  # [k, d] F(s): the LM's own o
        residual = outputs - relation_readout(projection, bias, 1.0)  # [k, d] ε
        along_b = (residual @ bias / bias.norm()) ** 2 / residual.norm(dim=-1) ** 2  # share of ‖ε‖² along b
        values = {
            "residual_norm": residual.norm(dim=-1),
            "bias_norm": bias.norm().expand(len(residual)),
            "projection_norm": projection.norm(dim=-1),
            "residual_over_bias": residual.norm(dim=-1) / bias.norm(),
            "residual_over_projection": residual.norm(dim=-1) / projection.norm(dim=-1),
            "residual_share_along_bias": along_b,
            "residual_cosine_bias": torch.nn.functional.cosine_similarity(residual, bias[None], dim=-1),
        }
        return [
            row
            for metric, per_sample in values.items()
            for row in context.split_rows(
                per_sample[:, None], (metric,), kind=self.name, estimator="lre", layer=str(context.layer)
            )
        ]

    def summarize(self, rows: list[dict], rule: SelectionRule) -> Numbers:
        """{metric: its mean over bundles} on all known test samples."""
        per_metric = defaultdict(list)
        for row in rows:
            if row["split"] == "all":
                per_metric[row["metric"]].append(row["value"])
        return {metric: nanmean(values) for metric, values in per_metric.items()}

    def render(self, numbers: Numbers, findings: Findings) -> str:
        table = markdown_table(
            ["mean over relations (known test samples)", "value"],
            [[metric, f"{value:.3f}"] for metric, value in numbers.items()],
        )
        return section(table, verdict(
            f"‖ε‖ is {numbers.get('residual_over_bias', NAN):.2f} × ‖b‖ and "
            f"{numbers.get('residual_over_projection', NAN):.2f} × ‖W s‖ on average; "
            f"{numbers.get('residual_share_along_bias', NAN):.0%} of ‖ε‖² lies along b "
            f"(cosine(ε, b) {numbers.get('residual_cosine_bias', NAN):.2f}): that share is what shrinking b can remove."
        ))  # fmt: skip
