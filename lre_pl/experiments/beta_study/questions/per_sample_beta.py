"""4. Per-sample β: the smallest β that gives the LM's own answer."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch

from lre_pl.experiments.beta_study.context import StudyContext
from lre_pl.experiments.beta_study.questions.base import (
    Findings,
    Numbers,
    PerBundleQuestion,
    figure_name,
    register,
    section,
    verdict,
)
from lre_pl.lre.operator import relation_readout
from lre_pl.protocol.markdown import markdown_table
from lre_pl.protocol.selection import SelectionRule

#: The fine β grid of the per-sample search: 0 to 10 in steps of 0.05.
FINE_BETAS = [round(0.05 * i, 2) for i in range(201)]


def smallest_beta(
    answers: Callable[[torch.Tensor], torch.Tensor],
    projection: torch.Tensor,
    bias: torch.Tensor,
    own: torch.Tensor,
    betas: Sequence[float] = FINE_BETAS,
) -> torch.Tensor:
    """[n]: per row the smallest β of ``betas`` at which ``answers(β W s + b)`` (top-1 token ids) is
    ``own`` [n], the LM's own answer; nan where none is. ``projection`` and ``bias`` are [n, d].

    A scan, not a bisection: nothing makes the hit monotone in β.
    """
    found = torch.full((len(projection),), float("nan"))
    for beta in betas:
        open_rows = found.isnan().nonzero().flatten()
        if not len(open_rows):
            break
        hit = answers(relation_readout(projection[open_rows], bias[open_rows], beta)) == own[open_rows]
        found[open_rows[hit]] = beta
    return found


def top1_answers(lm) -> Callable[[torch.Tensor], torch.Tensor]:
    """The LM's top-1 token ids [n] of residual vectors [n, d], through its final norm and unembedding:
    the ``answers`` that :func:`smallest_beta` compares with the LM's own answer."""

    def answers(hidden: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return lm.decode(hidden.to(lm.device)).argmax(-1).cpu()

    return answers


def plot_per_sample_beta(model: str, rows: list[dict]):
    """Histograms of the smallest β: both sample sets pooled, then the test samples per relation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pooled, per_relation = defaultdict(list), defaultdict(list)
    for row in rows:
        pooled[row["estimator"]].append(row["value"])
        if row["estimator"] == "test_mean_W_b":
            per_relation[row["relation"]].append(row["value"])
    panels = [(f"{name}, all relations", values) for name, values in pooled.items()]
    panels += [(f"test: {relation}", values) for relation, values in sorted(per_relation.items())]
    columns = 6
    grid_rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(grid_rows, columns, figsize=(3 * columns, 2.2 * grid_rows), squeeze=False)
    for axis, (title, betas) in zip(axes.flat, panels):
        found = [b for b in betas if not math.isnan(b)]
        axis.hist(found, bins=40, range=(0, 10))
        axis.axvline(1.0, color="grey", linewidth=0.8)
        axis.set_title(f"{title} ({len(found)}/{len(betas)})", fontsize=7)
        axis.tick_params(labelsize=6)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    figure.suptitle(f"{model}: the smallest β at which the readout gives the LM's own answer (line: β = 1)")
    figure.tight_layout(rect=(0, 0, 1, 0.98))  # room for the title
    return figure


@register
class PerSampleBeta(PerBundleQuestion):
    """Per sample the smallest β on a fine grid at which the readout's top-1 token is the LM's own
    answer: with the sample's own J_i s_i and b_i (training samples) and with the mean W and b (known
    test samples)."""

    name = "per_sample_beta"
    number = 4
    title = "Per-sample β: the smallest β that gives the LM's own answer"

    def rows(self, context: StudyContext) -> list[dict]:
        b, i = context.bundle, context.bundle.layer_index(context.layer)
        answers = top1_answers(context.decoder.lm)
        # Training samples with their own J_i s_i and b_i (β = 1 gives o_i itself, so at most 1).
        train = smallest_beta(
            answers, b.train_jacobian_states[:, i], b.train_biases[:, i], answers(b.train_output_states)
        )
        projection, bias = context.projection_and_bias()  # known test samples with the mean W and b
        test = smallest_beta(
            answers, projection, bias.expand_as(projection), answers(b.test_output_states[context.known])
        )
        return [  # one row per sample: the histograms read them
            context.row(kind=self.name, estimator=sample_set, layer=str(context.layer), split="all",
                        metric="smallest_beta", value=value, n=1)
            for sample_set, values in (("train_own_J_b", train), ("test_mean_W_b", test))
            for value in values.tolist()
        ]  # fmt: skip

    def summarize(self, rows: list[dict], rule: SelectionRule) -> Numbers:
        """{sample set: the smallest β of each sample (NaN: none on the grid)}."""
        values = defaultdict(list)
        for row in rows:
            values[row["estimator"]].append(row["value"])
        return dict(values)

    def render(self, numbers: Numbers, findings: Findings) -> str:
        table = []
        for sample_set, betas in numbers.items():
            found = sorted(b for b in betas if not math.isnan(b))
            quartiles = statistics.quantiles(found, n=4) if len(found) > 1 else [float("nan")] * 3
            table.append([
                sample_set, str(len(betas)), f"{len(found) / len(betas):.2f}",
                f"{quartiles[1]:.2f} [{quartiles[0]:.2f}–{quartiles[2]:.2f}]",
                f"{sum(b > 1 for b in found) / max(len(found), 1):.2f}",
            ])  # fmt: skip
        headings = ["samples", "n", "share with a β ≤ 10", "smallest β: median [quartiles]",
                    "share needing β > 1"]  # fmt: skip
        text = section(markdown_table(headings, table),
                       "\n`train_own_J_b`: each training sample with its own J_i s_i and b_i (β = 1 gives o_i "
                       "exactly, so its β is at most 1). `test_mean_W_b`: known test samples with the LRE's mean W "
                       f"and b. Histograms, pooled and per relation: `{figure_name(findings.model, self.name)}`.\n")  # fmt: skip
        test = sorted(b for b in numbers.get("test_mean_W_b", []) if not math.isnan(b))
        train = numbers.get("train_own_J_b", [])
        if test and train:
            text += verdict(
                f"With the mean W and b, half of the known test samples need β ≤ {statistics.median(test):.2f} and "
                f"{sum(b > 1 for b in test) / len(test):.0%} need β > 1. With its own b_i, "
                f"{sum(b == 0 for b in train) / len(train):.0%} of the training samples are named by b_i alone (β = 0)."
            )  # fmt: skip
        return text

    def figures(self, rows: list[dict], model: str) -> dict:
        return {figure_name(model, self.name): plot_per_sample_beta(model, rows)} if rows else {}
