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
        """{β held: {mean test faithfulness@1, bundles, the layers chosen}}."""
        fixed = defaultdict(list)
        for row in rows:
            if row["metric"] == "faithfulness@1":
                fixed[row["estimator"].removeprefix("beta=")].append((row["value"], row["layer"]))
        return {
            beta: {"mean": nanmean(x for x, _ in v), "n": len(v),
                   "layers": sorted({layer for _, layer in v}, key=_layer_order)}
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
        return section(table, verdict(
            f"{means} (test faithfulness@1; β and layer interact: the protocol's layer "
            "search at β = 1 cannot see layers that only work at a larger β)."
        ))  # fmt: skip
