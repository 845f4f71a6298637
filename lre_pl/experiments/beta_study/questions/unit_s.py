"""3. Unit s, and equalised ‖o‖."""

from __future__ import annotations

import torch

from lre_pl.experiments.beta_study.context import StudyContext
from lre_pl.experiments.beta_study.questions.base import (
    NAN,
    Findings,
    HeadlineLine,
    Numbers,
    ScanQuestion,
    difference_words,
    number,
    paper_lre,
    register,
    section,
    verdict,
)
from lre_pl.lre.operator import relation_readout


@register
class UnitS(ScanQuestion):
    """The LRE of unit s (W = mean_i ‖s_i‖ J_i, read on s/‖s‖ at test) and of equalised ‖o‖ (every o_i,
    and so J_i and b_i, scaled by min_j ‖o_j‖ / ‖o_i‖ before averaging). Needs each training sample's
    J_i at the study's layer (:attr:`StudyContext.jacobians`)."""

    name = "unit_s"
    number = 3
    title = "Unit s, and equalised ‖o‖"
    headline = (
        HeadlineLine(100, "unit s / equalised ‖o‖ / after the norm, β = 1",
                     lambda m: f"{number(m, 'unit_s', 'variants', 'unit_s', 'beta_1')} / "
                               f"{number(m, 'unit_s', 'variants', 'equalised_o', 'beta_1')} / "
                               f"{number(m, 'after_norm', 'variants', 'after_norm', 'beta_1')}"),
    )  # fmt: skip

    def rows(self, context: StudyContext) -> list[dict]:
        b, i = context.bundle, context.bundle.layer_index(context.layer)
        s, o, jacobians = b.train_subject_states[:, i], b.train_output_states, context.jacobians
        biases = b.train_biases[:, i]  # [n, d] b_i = o_i − J_i s_i, as estimated (J_i is checked against it)
        test = b.test_states(context.layer)[context.known]  # [k, d]
        unit_weight = (s.norm(dim=-1)[:, None, None] * jacobians).mean(0)  # d o / d u at u = s / ‖s‖
        scale = o.norm(dim=-1).min() / o.norm(dim=-1)  # [n] every o_i down to the smallest norm
        equal_weight = (scale[:, None, None] * jacobians).mean(0)
        equal_bias = (scale[:, None] * biases).mean(0)
        unit_projection = torch.nn.functional.normalize(test, dim=-1) @ unit_weight.T
        equal_projection = test @ equal_weight.T
        layer = str(context.layer)
        return [
            *context.scan(lambda beta: relation_readout(unit_projection, biases.mean(0), beta),
                          kind=self.name, estimator="unit_s", layer=layer),
            *context.scan(lambda beta: relation_readout(equal_projection, equal_bias, beta),
                          kind=self.name, estimator="equalised_o", layer=layer),
        ]  # fmt: skip

    def render(self, numbers: Numbers, findings: Findings) -> str:
        paper = paper_lre(findings.numbers)
        unit = numbers["variants"].get("unit_s", {})
        equal = numbers["variants"].get("equalised_o", {})
        text = (
            f"At β = 1 unit s reaches {unit.get('beta_1', NAN):.3f} and equalised ‖o‖ "
            f"{equal.get('beta_1', NAN):.3f}, against {paper.get('beta_1', NAN):.3f} for the paper's "
            f"LRE at the same layers ({paper.get('chosen', NAN):.3f} at its dev-chosen β); their chosen β "
            f"(medians {unit.get('median_beta', NAN):.2f} and {equal.get('median_beta', NAN):.2f}) "
            "say whether either removes the need for β."
        )
        if paper:
            text += " " + " ".join(
                f"{label} at β = 1 minus the paper's LRE at β = 1: "
                f"{difference_words(v['beta_1_by_bundle'], paper['beta_1_by_bundle'])}; minus the paper's LRE at "
                f"its dev-chosen β: {difference_words(v['beta_1_by_bundle'], paper['chosen_by_bundle'])}."
                for label, v in (("Unit s", unit), ("Equalised ‖o‖", equal))
                if v
            )
        return section(self.table(numbers["variants"]), verdict(text))
