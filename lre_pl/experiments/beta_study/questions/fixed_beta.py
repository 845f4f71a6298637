"""8. β held fixed, the layer searched."""

from __future__ import annotations

from collections import defaultdict

from lre_pl.experiments.beta_study.context import StudyContext
from lre_pl.experiments.beta_study.questions.base import (
    PAPER_BETA,
    Findings,
    HeadlineLine,
    Numbers,
    PerBundleQuestion,
    number,
    register,
    section,
    verdict,
)
from lre_pl.lre.estimators import estimator_named
from lre_pl.protocol.intervals import paired_difference
from lre_pl.protocol.markdown import markdown_table, nanmean
from lre_pl.protocol.selection import SelectionRule, first_best


def _layer_order(layer: str) -> tuple[bool, int]:
    """``emb`` first, then the blocks in order."""
    return (layer != "emb", int(layer) if layer != "emb" else 0)


@register
class FixedBeta(PerBundleQuestion):
    """The layer searched (on dev) with β held at 1 and at the paper's 2.25, reported on test."""

    name = "fixed_beta"
    number = 8
    title = "β held fixed, the layer searched"
    headline = (
        HeadlineLine(110, "layer searched at β = 1 / at β = 2.25",
                     lambda m: f"{number(m, 'fixed_beta', '1.0', 'mean')} / {number(m, 'fixed_beta', '2.25', 'mean')}"),
    )  # fmt: skip

    def rows(self, context: StudyContext) -> list[dict]:
        lre, rows = estimator_named("lre"), []
        for beta in (1.0, PAPER_BETA):
            scores = context.hits_at(lre, [(layer, beta) for layer in context.bundle.layers])
            layer, _ = first_best(context.means(scores, "dev"), scores)
            rows += context.split_rows(
                scores[layer, beta], context.faithfulness_metrics, splits=("test",), kind=self.name,
                estimator=f"beta={beta}", layer=str(layer), beta=beta,
            )  # fmt: skip
        return rows

    def summarize(self, rows: list[dict], rule: SelectionRule) -> Numbers:
        """{β held: {mean test faithfulness@1, bundles, the layers chosen, the value per bundle}}."""
        fixed = defaultdict(list)
        for row in rows:
            if row["metric"] == "faithfulness@1":
                fixed[row["estimator"].removeprefix("beta=")].append(row)
        return {
            beta: {"mean": nanmean(r["value"] for r in v), "n": len(v),
                   "layers": sorted({r["layer"] for r in v}, key=_layer_order),
                   "by_bundle": {(r["relation"], r["trial"]): r["value"] for r in v}}
            for beta, v in fixed.items()
        }  # fmt: skip

    def render(self, numbers: Numbers, findings: Findings) -> str:
        table = markdown_table(
            [
                "β held at",
                "relations × trials",
                "faithfulness@1 (test), layer chosen on dev",
                "layers chosen",
            ],
            [[beta, str(v["n"]), f"{v['mean']:.3f}", ", ".join(v["layers"])] for beta, v in numbers.items()],
        )
        means = "; ".join(f"layer searched at β = {beta}: {v['mean']:.3f}" for beta, v in numbers.items())
        paper, one = numbers.get(str(PAPER_BETA), {}), numbers.get("1.0", {})
        if not (paper and one):
            return section(table, verdict(f"{means} (test faithfulness@1)."))
        gain = paired_difference(paper["by_bundle"], one["by_bundle"])
        meaning = (
            "β and layer interact: the protocol's layer search at β = 1 cannot see layers that only work "
            "at a larger β"
            if gain.detectable and gain.estimate > 0
            else f"no sign here that the layer search at β = 1 misses layers that work at β = {PAPER_BETA}"
        )
        return section(table, verdict(
            f"{means} (test faithfulness@1); at β = {PAPER_BETA} minus at β = 1: "
            f"{gain.difference_words()}. So {meaning}."
        ))  # fmt: skip
