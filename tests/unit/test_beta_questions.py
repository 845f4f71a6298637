"""The β study's questions summarize and render hand-written rows (no model), and the report assembles
their sections in the registry's order and their headline lines in the answers table."""

import math

import pytest

from lre_pl.experiments.beta_study.questions import REGISTRY
from lre_pl.experiments.beta_study.questions.base import Findings, number
from lre_pl.experiments.beta_study.report import ModelStudy, study_markdown
from lre_pl.protocol.rows import make_row
from lre_pl.protocol.selection import SelectionRule

RULE = SelectionRule([0.5, 1.0, 2.0], 1.0)


def row(relation: str, kind: str, **fields) -> dict:
    return make_row(model="m", relation=relation, category="c", trial=0, kind=kind, **fields)


FIXED = [
    row("r1", "fixed_beta", estimator="beta=1.0", layer="3", beta=1.0, split="test", metric="faithfulness@1", value=0.5, n=4),
    row("r2", "fixed_beta", estimator="beta=1.0", layer="emb", beta=1.0, split="test", metric="faithfulness@1", value=0.25, n=4),
    row("r1", "fixed_beta", estimator="beta=1.0", layer="3", beta=1.0, split="test", metric="faithfulness@3", value=1.0, n=4),
    row("r1", "fixed_beta", estimator="beta=2.25", layer="10", beta=2.25, split="test", metric="faithfulness@1", value=1.0, n=4),
    row("r2", "fixed_beta", estimator="beta=2.25", layer="2", beta=2.25, split="test", metric="faithfulness@1", value=0.5, n=4),
]  # fmt: skip
RESIDUAL = [
    row(relation, "residual", estimator="lre", layer="3", split=split, metric=metric, value=value, n=4)
    for relation, scale in (("r1", 1.0), ("r2", 3.0))
    for split in ("test", "all")
    for metric, value in (("residual_over_bias", 0.5 * scale), ("residual_share_along_bias", 0.1 * scale))
]


def test_fixed_beta_summarizes_and_renders_its_rows():
    question = REGISTRY["fixed_beta"]()
    numbers = question.summarize(FIXED, RULE)
    assert numbers == {
        "1.0": {
            "mean": 0.375,
            "n": 2,
            "layers": ["emb", "3"],
            "by_bundle": {("r1", 0): 0.5, ("r2", 0): 0.25},
        },
        "2.25": {"mean": 0.75, "n": 2, "layers": ["2", "10"], "by_bundle": {("r1", 0): 1.0, ("r2", 0): 0.5}},
    }
    assert question.render(numbers, Findings("m", RULE)) == (
        "| β held at | relations × trials | faithfulness@1 (test), layer chosen on dev | layers chosen |\n"
        "|---|---|---|---|\n"
        "| 1.0 | 2 | 0.375 | emb, 3 |\n"
        "| 2.25 | 2 | 0.750 | 2, 10 |\n"
        "\n\n**Verdict.** layer searched at β = 1.0: 0.375; layer searched at β = 2.25: 0.750 (test faithfulness@1); "
        # Both relations gain (+0.5, +0.25), but two relations are too few for an interval: no verdict.
        "at β = 2.25 minus at β = 1: +0.375 [2 relations: too few for an interval] (2 relations, 2 bundles): "
        "no detectable difference. So no sign here that the layer search at β = 1 misses layers that work at "
        "β = 2.25.\n"
    )


def test_residual_means_only_the_all_split():
    numbers = REGISTRY["residual"]().summarize(RESIDUAL, RULE)
    assert numbers == pytest.approx({"residual_over_bias": 1.0, "residual_share_along_bias": 0.2})
    assert number({"residual": numbers}, "residual", "residual_share_along_bias", fmt=".0%") == "20%"
    assert number({"residual": numbers}, "residual", "residual_cosine_bias") == "–"


def test_the_report_assembles_sections_in_registry_order_and_every_headline_line():
    study = ModelStudy(RESIDUAL + FIXED, {}, ["residual", "fixed_beta", "across_trials"], RULE)
    text, numbers = study_markdown({"m": study})
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == [
        "## The answers",
        "## 7. The linearisation residual ε = o − (W s + b) on known test samples",
        "## 8. β held fixed, the layer searched",
        "## 10. Hyper-parameters held fixed across trials: the spread",
    ]
    assert "No relation has two or more evaluated trials: run the sweep with several trials.\n" in text
    table = text.split("## The answers\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert table[2] == "| bundles (relation × trial) / relations | 2 / 2 |"
    assert table[-4:] == [
        "| unit s / equalised ‖o‖ / after the norm, β = 1 | – / – / – |",
        "| layer searched at β = 1 / at β = 2.25 | 0.375 / 0.750 |",
        "| ‖ε‖ / ‖b‖, and the share of ‖ε‖² along b | 1.00, 20% |",
        "| max logit gap, β on W s against 1/β on b | – |",
    ]
    assert len(table) == 2 + 14  # the heading, its rule, then every question's lines and the coverage line
    assert (
        "**How much of b is ε?** On known test samples ‖ε‖ = 1.00 ‖b‖, and 20% of ‖ε‖² lies along b" in text
    )
    assert set(numbers["m"]) == {"residual", "fixed_beta", "across_trials", "bundles", "relations"}
    assert math.isclose(numbers["m"]["fixed_beta"]["2.25"]["mean"], 0.75)
