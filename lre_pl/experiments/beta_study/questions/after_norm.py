"""6. The Jacobian after the final norm, decoded without a second norm."""

from __future__ import annotations

import torch

from lre_pl.experiments.beta_study.context import StudyContext
from lre_pl.experiments.beta_study.questions.base import (
    NAN,
    Findings,
    Numbers,
    ScanQuestion,
    difference_words,
    paper_lre,
    register,
    section,
    verdict,
)
from lre_pl.lre.operator import relation_readout


def after_norm_operator(
    lm, jacobians: torch.Tensor, subject_states: torch.Tensor, output_states: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [d, d], b [d]) of the LRE of the final norm's output: W = mean_i D_i J_i and
    b = mean_i (norm(o_i) − D_i J_i s_i), D_i the final norm's Jacobian at o_i. Its readout is already
    after the norm: decode it by the unembedding alone (the paper's code applied the norm again).
    ``jacobians`` [n, d, d] J_i, ``subject_states`` [n, d] s_i, ``output_states`` [n, d] o_i.
    """
    o = output_states.to(lm.device)
    with torch.no_grad():
        d_norm = torch.stack([torch.func.jacrev(lm.final_norm)(row) for row in o]).cpu()  # [n, d, d] D_i
        normed = lm.final_norm(o).cpu()  # [n, d]
    products = d_norm @ jacobians  # [n, d, d] D_i J_i
    return products.mean(0), (normed - torch.einsum("nij,nj->ni", products, subject_states)).mean(0)


@register
class AfterNorm(ScanQuestion):
    """The Jacobian of the final norm's output (D_i J_i, D_i the norm's Jacobian at o_i), read over the
    β grid and decoded by the unembedding alone (no second norm). Needs each training sample's J_i at
    the study's layer (:attr:`StudyContext.jacobians`)."""

    name = "after_norm"
    number = 6
    title = "The Jacobian after the final norm, decoded without a second norm"

    def rows(self, context: StudyContext) -> list[dict]:
        b, i = context.bundle, context.bundle.layer_index(context.layer)
        weight, bias = after_norm_operator(
            context.decoder.lm, context.jacobians, b.train_subject_states[:, i], b.train_output_states
        )
        projection = context.projection(weight)
        return context.scan(
            lambda beta: relation_readout(projection, bias, beta),
            apply_norm=False, kind=self.name, estimator="after_norm", layer=str(context.layer),
        )  # fmt: skip

    def render(self, numbers: Numbers, findings: Findings) -> str:
        after, paper = numbers["variants"].get("after_norm", {}), paper_lre(findings.numbers)
        text = (
            f"After the norm, β = 1 gives {after.get('beta_1', NAN):.3f} (the pre-norm LRE "
            f"{paper.get('beta_1', NAN):.3f}); its dev-chosen β has median {after.get('median_beta', NAN):.2f}."
        )
        if after and paper:
            text += (
                " After the norm at β = 1 minus the pre-norm LRE at β = 1: "
                f"{difference_words(after['beta_1_by_bundle'], paper['beta_1_by_bundle'])}; minus the pre-norm LRE "
                f"at its dev-chosen β: {difference_words(after['beta_1_by_bundle'], paper['chosen_by_bundle'])}."
            )
        return section(self.table(numbers["variants"]), verdict(text))
