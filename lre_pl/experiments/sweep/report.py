"""A sweep's results from its row files alone: ``results.csv``, ``summary.md`` and figures.

Numbers of a category are means over its evaluated relations, per trial; the tables give the mean
± standard deviation of those over trials (no ± with one trial).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from lre_pl.dataset.relations import CATEGORIES
from lre_pl.files import write_text_atomically
from lre_pl.lightning.outputs import write_figure
from lre_pl.protocol.markdown import markdown_table, mean_std_cell, nanmean
from lre_pl.protocol.rows import read_rows, write_rows_csv

#: Columns of the summary's faithfulness table: (heading, estimator, selection, reported split).
FAITHFULNESS_COLUMNS = (
    ("LRE", "lre", "dev", "test"),
    ("LRE, chosen on reported (paper)", "lre", "paper", "all"),
    ("LRE at emb", "lre_emb", "dev", "test"),
    ("translation", "translation", "dev", "test"),
    ("linear regression", "linear_regression", "dev", "test"),
    ("identity (logit lens)", "identity", "dev", "test"),
)
CAUSALITY_COLUMNS = (
    ("LRE edit W⁺_r(o'-o)", "lre", "dev", "test"),
    ("LRE, chosen on reported (paper)", "lre", "paper", "all"),
    ("s → s'", "edit:target_subject_state", "dev", "test"),
    ("s → emb(s')", "edit:target_subject_embedding", "dev", "test"),
    ("s → o'", "edit:target_output", "dev", "test"),
)


class SweepResults:
    """Indexes of the rows that the tables and figures read."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.trials = sorted({row["trial"] for row in rows})
        self.category = {row["relation"]: row["category"] for row in rows}
        self.counts = {
            (row["relation"], row["trial"], row["metric"]): row["value"]
            for row in rows
            if row["kind"] == "count"
        }
        self.selected = {
            (
                row["relation"],
                row["trial"],
                row["estimator"],
                row["selection"],
                row["split"],
                row["metric"],
            ): row
            for row in rows
            if row["kind"] == "selected"
        }

    @property
    def relations(self) -> list[str]:
        return sorted(self.category)

    def too_few_known(self) -> dict[str, list[int]]:
        """relation -> the trials in which it had too few known test samples to be evaluated."""
        skipped = defaultdict(list)
        for relation, trial, metric in sorted(self.counts):
            if metric == "too_few_known":
                skipped[relation].append(trial)
        return dict(skipped)

    def evaluated(self, category: str | None = None) -> list[str]:
        """Relations evaluated in at least one trial (a trial's means skip those it could not evaluate)."""
        skipped = self.too_few_known()
        return [
            r
            for r in self.relations
            if len(skipped.get(r, [])) < len(self.trials)
            and (category is None or self.category[r] == category)
        ]

    def value(self, relation, trial, estimator, selection, split, metric) -> float:
        row = self.selected.get((relation, trial, estimator, selection, split, metric))
        return row["value"] if row else float("nan")

    def category_cells(self, columns, metric: str) -> list[list[str]]:
        table = []
        for category in [*CATEGORIES, None]:
            relations = self.evaluated(category)
            total = [r for r in self.relations if category is None or self.category[r] == category]
            if not total:
                continue
            cells = [category or "**all**", f"{len(relations)}/{len(total)}"]
            for _, estimator, selection, split in columns:
                per_trial = [
                    nanmean(self.value(r, t, estimator, selection, split, metric) for r in relations)
                    for t in self.trials
                ]
                cells.append(mean_std_cell(per_trial))
            table.append(cells)
        return table


def summary_markdown(results: SweepResults, config) -> str:
    """The summary page: by category, then by relation, then the relations not evaluated."""
    trials = ", ".join(map(str, results.trials))
    parts = [
        f"# LRE sweep: {config.model}\n",
        f"{len(results.relations)} relations, trials (seeds) {trials}, n_train {config.n_train}, layers "
        f"{config.layers}, layer chosen at beta {config.layer_search_beta}, beta grid {min(config.betas)}..."
        f"{max(config.betas)} ({len(config.betas)} values), causality ranks {config.ranks}. Hyper-parameters "
        f"are chosen on a dev split ({config.dev_fraction:.0%}) of each relation's known test samples and "
        "reported on the rest; the paper's way (chosen on the very samples reported) is the column so "
        "marked. Cells: mean over the category's relations, then mean ± std over trials.\n",
        "## Faithfulness@1 by category\n",
        markdown_table(
            ["category", "relations", *(c[0] for c in FAITHFULNESS_COLUMNS)],
            results.category_cells(FAITHFULNESS_COLUMNS, "faithfulness@1"),
        ),
        "## Causality (efficacy) by category\n",
        markdown_table(
            ["category", "relations", *(c[0] for c in CAUSALITY_COLUMNS)],
            results.category_cells(CAUSALITY_COLUMNS, "efficacy"),
        ),
        "## By relation (LRE, chosen on dev, reported on test; first trial's layer, beta and rank)\n",
    ]
    rows = []
    for relation in results.relations:
        t0 = results.trials[0]
        known = [
            results.counts.get((relation, t, "known_test_samples"), float("nan")) for t in results.trials
        ]
        accuracy = [results.counts.get((relation, t, "lm_accuracy"), float("nan")) for t in results.trials]
        faithful = results.selected.get((relation, t0, "lre", "dev", "test", "faithfulness@1"))
        causal = results.selected.get((relation, t0, "lre", "dev", "test", "efficacy"))
        rows.append(
            [
                relation,
                results.category[relation],
                f"{nanmean(known):.0f}",
                f"{nanmean(accuracy):.2f}",
                mean_std_cell(
                    [
                        results.value(relation, t, "lre", "dev", "test", "faithfulness@1")
                        for t in results.trials
                    ]
                ),
                str(faithful["layer"]) if faithful else "–",
                f"{faithful['beta']:g}" if faithful else "–",
                mean_std_cell(
                    [results.value(relation, t, "lre", "dev", "test", "efficacy") for t in results.trials]
                ),
                str(causal["rank"]) if causal else "–",
            ]
        )
    parts.append(
        markdown_table(
            [
                "relation",
                "category",
                "known",
                "LM acc.",
                "faithfulness@1",
                "layer",
                "beta",
                "efficacy",
                "rank",
            ],
            rows,
        )
    )
    parts.append("## Where the time went (wall seconds, summed over relations and trials)\n")
    totals = defaultdict(float)
    for row in results.rows:
        if row["kind"] == "timing":
            totals[row["metric"].removeprefix("seconds_")] += row["value"]
    parts.append(
        markdown_table(list(totals), [[f"{value:.0f}" for value in totals.values()]])
        + "knowns: the forward over every test prompt; jacobians: the all-layer engine on the training "
        "prompts (global rank 0's share under DDP); grid: every faithfulness decode; causality: every edit. "
        "Model loads are not counted.\n"
        if totals
        else "No timings recorded.\n"
    )
    skipped = results.too_few_known()
    parts.append(
        f"## Not evaluated: fewer than {config.min_known} known test samples\n\n"
        "A relation is left out of a trial's means where that trial's split left it too few known samples.\n"
    )
    lines = []
    for relation, trials in skipped.items():
        known = ", ".join(
            f"{results.counts.get((relation, t, 'known_test_samples'), 0):.0f}" for t in results.trials
        )
        where = (
            "every trial" if len(trials) == len(results.trials) else "trial " + ", ".join(map(str, trials))
        )
        lines.append(f"- {relation} ({results.category[relation]}): {where} (known per trial: {known})")
    parts.append("\n".join(lines) + "\n" if lines else "None.\n")
    return "\n".join(parts)


def _layer_order(layer: str) -> int:
    return -1 if layer == "emb" else int(layer)


def plot_figures(results: SweepResults, config):
    """{file name: figure}: efficacy vs faithfulness, faithfulness by layer and by beta per category."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {c: plt.get_cmap("tab10")(i) for i, c in enumerate(CATEGORIES)}
    figures = {}

    figure, axes = plt.subplots(figsize=(6, 5))
    for relation in results.evaluated():
        x = nanmean(
            results.value(relation, t, "lre", "dev", "test", "faithfulness@1") for t in results.trials
        )
        y = nanmean(results.value(relation, t, "lre", "dev", "test", "efficacy") for t in results.trials)
        axes.scatter(x, y, color=colours[results.category[relation]], s=25)
    for category, colour in colours.items():
        axes.scatter([], [], color=colour, label=category)
    axes.set(xlabel="faithfulness@1 (test)", ylabel="efficacy (test)", xlim=(-0.05, 1.05), ylim=(-0.05, 1.05))
    axes.plot([0, 1], [0, 1], color="grey", lw=0.5, ls="--")
    axes.set_title(f"LRE per relation on {config.model}")
    axes.legend(fontsize=8)
    figures["efficacy_vs_faithfulness"] = figure

    by_layer, by_beta = defaultdict(lambda: defaultdict(list)), defaultdict(lambda: defaultdict(list))
    chosen = {
        (row["relation"], row["trial"]): row["layer"]
        for row in results.rows
        if row["kind"] == "selected" and row["estimator"] == "lre" and row["selection"] == "dev"
    }
    for row in results.rows:
        if not (row["kind"] == "grid" and row["estimator"] == "lre" and row["split"] == "all"):
            continue
        if row["metric"] != "faithfulness@1":
            continue
        category = results.category[row["relation"]]
        if row["beta"] == config.layer_search_beta:
            by_layer[category][row["layer"]].append(row["value"])
        if row["layer"] == chosen.get((row["relation"], row["trial"])):
            by_beta[category][row["beta"]].append(row["value"])
    for name, series, xlabel in (
        ("faithfulness_by_layer", by_layer, "layer (emb = token embedding)"),
        ("faithfulness_by_beta", by_beta, "beta (at each relation's chosen layer)"),
    ):
        figure, axes = plt.subplots(figsize=(7, 4))
        for category, points in series.items():
            keys = sorted(points, key=_layer_order) if name.endswith("layer") else sorted(points)
            xs = [_layer_order(k) for k in keys] if name.endswith("layer") else keys
            axes.plot(
                xs, [nanmean(points[k]) for k in keys], marker=".", color=colours[category], label=category
            )
        axes.set(xlabel=xlabel, ylabel="faithfulness@1 (all known)", ylim=(-0.02, 1.02))
        what = f"beta {config.layer_search_beta}" if name.endswith("layer") else "mean over relations"
        axes.set_title(f"LRE on {config.model}, {what}")
        axes.legend(fontsize=8)
        figures[name] = figure
    return figures


def write_report(root: Path, row_paths: list[Path], config) -> None:
    """results.csv, summary.md and the figures (PNG + TensorBoard) of every existing row file."""
    from torch.utils.tensorboard import SummaryWriter

    rows = read_rows(row_paths)
    if not rows:
        return
    write_rows_csv(root / "results.csv", rows)
    results = SweepResults(rows)
    summary = summary_markdown(results, config)
    write_text_atomically(root / "summary.md", summary)
    experiment = SummaryWriter(str(root / "tensorboard"))
    experiment.add_text("summary", summary)
    for name, figure in plot_figures(results, config).items():
        write_figure(figure, root / f"{name}.png", experiment)
    experiment.close()
