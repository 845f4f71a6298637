"""1. Bias variants: does any b make β = 1 work?"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

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
    register,
    section,
    verdict,
)
from lre_pl.lm.suffix import SuffixRun
from lre_pl.lre.bundle import Bundle
from lre_pl.lre.operator import relation_readout
from lre_pl.protocol.markdown import nanmean
from lre_pl.protocol.selection import SelectionRule

Layer = int | str

BIAS_VARIANTS = ("paper", "mean_output", "corner", "none")


def bias_variant(name: str, bundle: Bundle, layer: Layer, unembedding: torch.Tensor) -> torch.Tensor:
    """b [d] of one variant at ``layer`` (``unembedding`` [vocab, d], for the corner).

    ``corner``: the mean of the unit-normalised unembedding rows of the training objects' first
    tokens (the paper's corner, over the training objects only: the test objects are what is
    evaluated), scaled to the norm of the paper's b, so that only b's direction changes and β stays
    comparable with the paper's readout.
    """
    i = bundle.layer_index(layer)
    weight, paper = bundle.weights[i], bundle.biases[i]
    if name == "paper":
        return paper
    if name == "mean_output":
        return bundle.train_output_states.mean(0) - weight @ bundle.train_subject_states[:, i].mean(0)
    if name == "corner":
        rows = unembedding[bundle.train_object_tokens].float()  # [n, d]
        corner = torch.nn.functional.normalize(rows, dim=-1).mean(0)
        return corner * paper.norm() / corner.norm()
    if name == "none":
        return torch.zeros_like(paper)
    raise ValueError(f"bias variant {name!r}: use one of {BIAS_VARIANTS}")


@torch.no_grad()
def mean_subject_bias(lm, prompts: Sequence, bundle: Bundle, layer: Layer) -> torch.Tensor:
    """b = mean_i F_i(s_mean) − W s_mean [d]: F_i is the LM on training prompt i with s_mean written in
    place of its subject state at ``layer``; the outputs are averaged over the prompts (the same
    average as the paper's b over b_i). ``prompts``: the bundle's training prompts, in its order."""
    i = bundle.layer_index(layer)
    mean = bundle.train_subject_states[:, i].mean(0).to(lm.device, lm.dtype)  # [d] s_mean
    run = SuffixRun.prepare(lm, prompts)
    outputs = run.forward(
        lambda _, hidden: torch.cat([mean.expand(len(hidden), 1, -1), hidden[:, 1:]], dim=1), [layer]
    )
    return outputs.float().cpu().mean(0) - bundle.weights[i] @ mean.float().cpu()


def dev_bias(rows: list[dict], rule: SelectionRule) -> dict[str, float]:
    """Mean faithfulness@1 of the paper's LRE per β on dev and on test, at the layer-search β and at
    the β best on test: how much the dev split that chose the layer at the layer-search β favours it."""
    means = defaultdict(lambda: defaultdict(list))  # split -> β -> values
    for row in rows:
        if row["estimator"] == "paper" and row["metric"] == "faithfulness@1":
            means[row["split"]][row["beta"]].append(row["value"])
    dev, test = ({beta: nanmean(v) for beta, v in means[split].items()} for split in ("dev", "test"))
    search = rule.layer_search_beta
    if search not in dev or search not in test:
        return {}
    best = rule.beta(test)
    return {"dev_at_search": dev[search], "test_at_search": test[search], "best_test_beta": best,
            "dev_at_best": dev[best], "test_at_best": test[best]}  # fmt: skip


@register
class BiasVariants(ScanQuestion):
    """Faithfulness over the β grid with b = mean_i (o_i − J_i s_i) (``paper``), o_mean − W s_mean
    (``mean_output``), F(s_mean) − W s_mean (``mean_subject``: the LM run on each training prompt with
    s_mean in place of its s, outputs averaged), the objects' corner (``corner``) or no b (``none``)."""

    name = "bias_variants"
    number = 1
    title = "Bias variants: does any b make β = 1 work?"
    headline = (
        HeadlineLine(10, "LRE test faithfulness@1: β = 1 / β chosen per relation on dev",
                     lambda m: f"{number(m, 'bias_variants', 'variants', 'paper', 'beta_1')} / "
                               f"{number(m, 'bias_variants', 'variants', 'paper', 'chosen')}"),
        HeadlineLine(90, "best b at β = 1 (bias variants)",
                     lambda m: m.get("bias_variants", {}).get("best_at_1", "–")),
    )  # fmt: skip

    def rows(self, context: StudyContext) -> list[dict]:
        projection, _ = context.projection_and_bias()
        lm, layer = context.decoder.lm, context.layer
        unembedding = lm.unembedding.weight.detach().cpu()
        biases = {name: bias_variant(name, context.bundle, layer, unembedding) for name in BIAS_VARIANTS}
        prompts = [item.prompt for item in context.train_prompts]
        biases["mean_subject"] = mean_subject_bias(lm, prompts, context.bundle, layer)
        return [
            row
            for name, bias in biases.items()
            for row in context.scan(
                lambda beta, bias=bias: relation_readout(projection, bias, beta),
                kind=self.name, estimator=name, layer=str(layer),
            )
        ]  # fmt: skip

    def summarize(self, rows: list[dict], rule: SelectionRule) -> Numbers:
        numbers = super().summarize(rows, rule)
        variants = numbers["variants"]
        numbers["best_at_1"] = max(variants, key=lambda v: variants[v]["beta_1"])
        numbers["dev_bias"] = dev_bias(rows, rule)
        return numbers

    def render(self, numbers: Numbers, findings: Findings) -> str:
        variants, best = numbers["variants"], numbers["best_at_1"]
        paper = variants.get("paper", {})
        text = (
            f"At β = 1 the best bias is `{best}` ({variants[best]['beta_1']:.3f}); the paper's b "
            f"reaches {paper.get('beta_1', NAN):.3f} at β = 1 and {paper.get('chosen', NAN):.3f} at "
            f"its dev-chosen β (median {paper.get('median_beta', NAN):.2f})."
        )
        if paper:
            others = "; ".join(
                f"`{name}` {difference_words(v['beta_1_by_bundle'], paper['beta_1_by_bundle'])}"
                for name, v in variants.items()
                if name != "paper"
            )
            text += (
                f" At β = 1, each b minus the paper's b: {others}. The paper's b at its dev-chosen β minus "
                f"at β = 1: {difference_words(paper['chosen_by_bundle'], paper['beta_1_by_bundle'])}."
            )
        return section(self.table(variants), verdict(text))
