"""The β study's verdicts state each difference with its 95 % bootstrap interval
(:mod:`lre_pl.protocol.intervals`): on hand-written rows whose per-bundle differences are known, a
difference that straddles 0 reads "no detectable difference" and one that does not reads "a real
difference", with the estimate and interval of those known differences."""

from lre_pl.experiments.beta_study.questions import REGISTRY
from lre_pl.experiments.beta_study.questions.base import Findings, bundle_means, interval_cell
from lre_pl.experiments.beta_study.report import _grid_line, _verdicts, model_sections
from lre_pl.protocol.intervals import bootstrap_mean
from lre_pl.protocol.rows import make_row
from lre_pl.protocol.selection import SelectionRule

RULE = SelectionRule([0.5, 1.0, 2.0], 1.0)
#: (relation, trial) bundles: two relations with two trials, four with one (an interval needs at least
#: :data:`~lre_pl.protocol.intervals.MIN_RELATIONS` relations).
BUNDLES = [("r1", 0), ("r1", 1), ("r2", 0), ("r3", 0), ("r3", 1), ("r4", 0), ("r5", 0), ("r6", 0)]
#: Per-bundle differences: relations on both sides of 0 (mean -0.00625), and all below 0 (mean -0.15; 0.1
#: above them, of both signs, clear of 0 so that rounding does not decide which side an interval's end is).
STRADDLES = [0.1, 0.1, -0.2, 0.1, 0.1, -0.25, 0.1, -0.1]
BELOW = [-0.1, -0.2, -0.05, -0.1, -0.3, -0.15, -0.25, -0.05]
#: The tuned LRE's test faithfulness at its dev-chosen β (2.0) on every bundle.
TUNED = 0.6


def scan_rows(kind: str, estimator: str, dev: dict, test: dict, relation: str, trial: int) -> list[dict]:
    """A faithfulness scan of one bundle: ``dev`` and ``test`` are {β: value}."""
    return [
        make_row(model="m", relation=relation, category="c", trial=trial, kind=kind, estimator=estimator,
                 layer="3", beta=beta, split=split, metric="faithfulness@1", value=value, n=4)
        for split, values in (("dev", dev), ("test", test))
        for beta, value in values.items()
    ]  # fmt: skip


def bias_rows(differences: list[float]) -> list[dict]:
    """The paper's LRE (dev chooses β = 2.0, where test reads :data:`TUNED`) and ``mean_output``, whose
    test faithfulness at β = 1 is the tuned LRE's plus each bundle's difference (dev chooses β = 1)."""
    rows = []
    for (relation, trial), difference in zip(BUNDLES, differences):
        rows += scan_rows(
            "bias_variants", "paper", {1.0: 0.2, 2.0: 0.8}, {1.0: 0.5, 2.0: TUNED}, relation, trial
        )
        rows += scan_rows("bias_variants", "mean_output", {1.0: 0.7, 2.0: 0.1},
                          {1.0: TUNED + difference, 2.0: 0.0}, relation, trial)  # fmt: skip
    return rows


def removes_line(differences: list[float]) -> str:
    _, numbers = model_sections(bias_rows(differences), RULE)
    return next(line for line in _verdicts("m", numbers).splitlines() if "Does a variant remove β?" in line)


def expected(differences: list[float]) -> str:
    """The interval of the known per-bundle differences, straight from the shared rule."""
    return bootstrap_mean(dict(zip(BUNDLES, differences))).difference_words()


def test_a_variant_whose_loss_straddles_0_is_not_ruled_out_and_reads_no_detectable_difference():
    differences = STRADDLES
    line = removes_line(differences)
    words = expected(differences)
    assert words.startswith("-0.006 [") and words.endswith(
        "(6 relations, 8 bundles, 95 % bootstrap interval): no detectable difference"
    )
    assert f"b = mean_output: {words}." in line
    assert (
        "Not ruled out for b = mean_output: at β = 1 it is not detectably below the LRE at its tuned β"
        in line
    )
    assert f"minus the LRE at its dev-chosen β ({TUNED:.3f})" in line


def test_a_variant_detectably_below_the_tuned_lre_does_not_remove_beta():
    differences = BELOW
    line = removes_line(differences)
    words = expected(differences)
    assert words.startswith("-0.150 [") and words.endswith("bootstrap interval): a real difference")
    assert line.startswith("- **Does a variant remove β?** No: every variant at β = 1 is detectably below")
    assert f"b = mean_output: {words}." in line


def test_bias_variants_verdict_compares_each_b_with_the_papers_at_beta_1_per_bundle():
    differences = BELOW
    question = REGISTRY["bias_variants"]()
    numbers = question.summarize(bias_rows(differences), RULE)
    assert numbers["variants"]["paper"]["chosen_by_bundle"] == dict.fromkeys(BUNDLES, TUNED)
    text = question.render(numbers, Findings("m", RULE))
    # mean_output at β = 1 minus the paper's b at β = 1 (0.5): 0.1 + each difference, of both signs (in the
    # rows' arithmetic, so that an interval's end at -0.1125 rounds as the report's does).
    against_paper = [(TUNED + d) - 0.5 for d in differences]
    assert f"`mean_output` {expected(against_paper)}" in text
    # The gain of tuning β: +0.1 everywhere.
    assert f"at β = 1: {expected([TUNED - 0.5] * len(BUNDLES))}." in text


def global_rows(learned_differences: list[float], grid_differences: list[float]) -> list[dict]:
    """``global_beta`` rows: each relation's best (0.6), a learned β and the grid's best β whose
    faithfulness is the best's plus the given differences, and the test-chosen ones."""
    rows = [
        make_row(model="m", kind="global_beta", estimator=estimator, split="all", metric="beta", value=beta,
                 beta=beta, n=1)
        for estimator, beta in (("learned:global:dev", 1.5), ("grid:global:dev", 1.0), ("oracle:global:test", 2.0))
    ]  # fmt: skip
    for index, (relation, trial) in enumerate(BUNDLES):
        values = {"best_per_relation": TUNED, "learned:global:dev": TUNED + learned_differences[index],
                  "grid:global:dev": TUNED + grid_differences[index], "oracle:global:test": 0.5,
                  "oracle:relation:test": 0.7}  # fmt: skip
        rows += [
            make_row(model="m", relation=relation, category="a" if relation < "r3" else "b", trial=trial,
                     kind="global_beta", estimator=estimator, layer="3", beta=1.0, split="test",
                     metric="faithfulness@1", value=value, n=4)
            for estimator, value in values.items()
        ]  # fmt: skip
    return rows


def test_one_global_beta_states_each_difference_from_the_per_relation_beta_with_its_interval():
    straddles, below = STRADDLES, BELOW
    _, numbers = model_sections(global_rows(straddles, below), RULE)
    line = _verdicts("m", numbers).splitlines()[3]
    assert line.startswith("- **One global β?**")
    assert f"(1.50): {expected(straddles)};" in line and expected(straddles).endswith(
        "no detectable difference"
    )
    assert f"(1.00): {expected(below)}" in line and expected(below).endswith("a real difference")
    # The test-chosen one β against one per relation: -0.2 on every bundle, and per category alike, where
    # category a's 2 relations are too few for an interval.
    assert f"with one β per relation: {expected([-0.2] * len(BUNDLES))}" in line
    assert "(worst category: a, -0.200 [2 relations: too few for an interval];" in line
    assert interval_cell(numbers, "global_beta", "grid:global:dev", "vs_best") == (
        bootstrap_mean(dict(zip(BUNDLES, below))).cell()
    )
    assert interval_cell(numbers, "global_beta", "heldout:global:dev", "vs_best") == "–"


def test_bundle_means_average_each_bundles_matching_rows():
    rows = [
        make_row(model="m", relation="r1", trial=0, kind="k", estimator="e", metric="x", value=value)
        for value in (1.0, 0.0, float("nan"))
    ] + [make_row(model="m", relation="r1", trial=1, kind="k", estimator="f", metric="x", value=1.0)]
    assert bundle_means(rows, estimator="e") == {("r1", 0): 0.5}
    assert bundle_means(rows, metric="x") == {("r1", 0): 0.5, ("r1", 1): 1.0}


def test_across_trials_shows_each_relations_spread_over_trials():
    rows = [
        make_row(model="m", relation=relation, trial=trial, kind="across_trials", estimator=variant,
                 split="test", metric="faithfulness@1", value=value)
        for relation, values in (("r1", (0.4, 0.6)), ("r2", (0.5, 0.5)), ("r3", (0.3, 0.5)), ("r4", (0.6, 0.6)),
                                 ("r5", (0.2, 0.3)))
        for trial, value in enumerate(values)
        for variant, value in (("fixed", value), ("own", value + 0.1 * trial))
    ]  # fmt: skip
    question = REGISTRY["across_trials"]()
    text = question.render(question.summarize(rows, RULE), Findings("m", RULE))
    assert "| r1 | 2 | 0.500 ± 0.141 | 0.550 ± 0.212 |" in text
    assert "| r2 | 2 | 0.500 ± 0.000 | 0.550 ± 0.071 |" in text
    assert "| r3 | 2 | 0.400 ± 0.141 | 0.450 ± 0.212 |" in text
    # Held fixed minus own std per relation: the own trial 1 is 0.1 higher, so -0.1 / √2 = -0.071 on every
    # relation: one value per relation.
    assert "held fixed minus own, per relation: -0.071 [-0.071, -0.071] (5 relations, 5 bundles" in text


def test_the_coverage_line_names_relations_trials_known_samples_the_cap_and_the_grid():
    rows = [
        make_row(model="m", relation=relation, trial=trial, kind="residual", split="all",
                 metric="residual_norm", value=1.0, n=n)
        for (relation, trial), n in zip(BUNDLES, (5, 9, 7, 6, 20, 7, 7, 8))
    ]  # fmt: skip
    sweep = {"max_known": 20, "betas": [0.0, 1.0, 2.0], "layers": ["emb", 3]}
    assert _grid_line("m", rows, sweep) == (
        "**m**: 6 relations, 8 bundles, trials [0, 1] (relations by their number of trials: 4 with 1, 2 with 2), "
        "7 known samples per bundle (median; 5–20), the sweep's cap on known samples per bundle (max_known): 20; "
        "the sweep's grid: layers emb, 3, β 0.0..2.0 (3 values)."
    )
    listed = {**sweep, "relations": ["country capital city", "name gender"], "trials": [0, 1]}
    studied = [make_row(model="m", relation="country capital city", trial=1, kind="residual", split="all",
                        metric="residual_norm", value=1.0, n=5)]  # fmt: skip
    assert _grid_line("m", studied, listed).endswith(
        "; listed by the sweep's config but not studied (too few known samples, or not run): "
        "country capital city trial 0, name gender trial 0, name gender trial 1."
    )
    # A study restricted to some of the sweep's relations (its config's `relations`) counts the others as
    # left out by choice and names only its own relations' missing trials.
    assert _grid_line("m", studied, listed, ["country capital city"]).endswith(
        "; the study's relations (`relations`): 1 of the sweep's 2; listed by the sweep's config but not "
        "studied (too few known samples, or not run): country capital city trial 0."
    )
