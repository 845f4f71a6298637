"""5. Each sample's own W_i against the mean W."""

from __future__ import annotations

from collections import defaultdict

import torch

from lre_pl.experiments.beta_study.context import StudyContext
from lre_pl.experiments.beta_study.questions.base import (
    NAN,
    Answer,
    Findings,
    Numbers,
    PerBundleQuestion,
    bundle_means,
    difference_words,
    register,
    section,
    verdict,
)
from lre_pl.lre.operator import relation_readout
from lre_pl.protocol.markdown import markdown_table, nanmean
from lre_pl.protocol.selection import SelectionRule

#: The projections compared: each sample's own J_i s_i, and the mean W on s_i.
PROJECTIONS = ("own_W_i", "mean_W")
METRICS = ("z_norm", "projection_norm", "top1_is_object")


@register
class PerSampleW(PerBundleQuestion):
    """Per training sample, ‖z‖, ‖W s_i‖ and the top-3 tokens of z = W_i s_i + b (its own Jacobian) and of
    z = W s_i + b (the mean W); the tokens go to a markdown table per bundle (rows cannot hold them)."""

    name = "per_sample_w"
    number = 5
    title = "Each sample's own W_i against the mean W"

    def rows(self, context: StudyContext) -> list[dict]:
        return self.answer(context).rows

    def answer(self, context: StudyContext) -> Answer:
        """Rows of ‖z‖ and ‖W s_i‖ per training sample, and the table with the top-3 tokens."""
        b, lm, i = context.bundle, context.decoder.lm, context.bundle.layer_index(context.layer)
        s, bias = b.train_subject_states[:, i], b.biases[i]
        projections = {"own_W_i": b.train_jacobian_states[:, i], "mean_W": s @ b.weights[i].T}  # W s_i [n, d]
        lines = [
            "| sample → object | W | ‖W s‖ | ‖z‖ | top-3 tokens of z = W s + b |",
            "|---|---|---|---|---|",
        ]
        rows = []
        for name, projection in projections.items():
            z = relation_readout(projection, bias, 1.0)  # [n, d]
            with torch.no_grad():
                top = lm.decode(z.to(lm.device)).topk(3).indices.cpu()  # [n, 3]
            hit = (top[:, 0] == b.train_object_tokens).float()
            for metric, values in zip(METRICS, (z.norm(dim=-1), projection.norm(dim=-1), hit)):
                rows += [  # one row per sample
                    context.row(kind=self.name, estimator=name, layer=str(context.layer), split="all",
                                metric=metric, value=value, n=1)
                    for value in values.tolist()
                ]  # fmt: skip
            for item, tokens, p_norm, z_norm in zip(
                context.train_prompts, top.tolist(), projection.norm(dim=-1), z.norm(dim=-1)
            ):
                words = ", ".join(repr(token) for token in lm.token_strings(tokens)).replace("|", "\\|")
                lines.append(
                    f"| {item.sample.subject} → {item.sample.object} | {name} | {p_norm:.1f} | {z_norm:.1f} | {words} |"
                )
        table = f"**{b.relation}** (trial {b.seed}, layer {context.layer})\n\n" + "\n".join(lines) + "\n"
        return Answer(rows, table)

    def summarize(self, rows: list[dict], rule: SelectionRule) -> Numbers:
        """{projection: {metric: mean over samples, ``top1_by_bundle``: the share per bundle}} of the
        projections that have rows."""
        values = defaultdict(list)
        for row in rows:
            values[row["estimator"], row["metric"]].append(row["value"])
        return {
            name: {metric: nanmean(values[name, metric]) for metric in METRICS}
            | {"top1_by_bundle": bundle_means(rows, estimator=name, metric="top1_is_object")}
            for name in PROJECTIONS
            if values[name, "z_norm"]
        }

    def render(self, numbers: Numbers, findings: Findings) -> str:
        table = markdown_table(
            ["W", "‖W s‖ (mean)", "‖z‖ (mean)", "top-1 is the object"],
            [[name, f"{v['projection_norm']:.1f}", f"{v['z_norm']:.1f}", f"{v['top1_is_object']:.2f}"]
             for name, v in numbers.items()],
        )  # fmt: skip
        text = section(
            table,
            "\nPer sample, with the top-3 tokens: `tables/per_sample_w/` beside the rows (the first below).\n",
        )
        own, mean = (
            (
                numbers.get(name, {}).get("projection_norm", NAN),
                numbers.get(name, {}).get("top1_is_object", NAN),
            )
            for name in PROJECTIONS
        )
        text += verdict(
            f"With its own W_i the projection has norm {own[0]:.1f} and names the object for "
            f"{own[1]:.0%} of the training samples; with the mean W, {mean[0]:.1f} and {mean[1]:.0%}."
            + (
                " Own W_i minus mean W, the share per bundle whose top-1 is the object: "
                + difference_words(numbers["own_W_i"]["top1_by_bundle"], numbers["mean_W"]["top1_by_bundle"])
                + "."
                if all(name in numbers for name in PROJECTIONS)
                else ""
            )
        )
        tables = findings.tables.get(self.name)
        return text + ("\n" + tables[0] if tables else "")
