"""A sweep's results from its row files alone: ``results.csv``, ``summary.md`` and figures.

Numbers of a category are means over its relations that have a value, per trial; the tables give the
mean ± standard deviation of those over trials (no ± with one trial), and each cell says how many
relations and (relation, trial) bundles it averages. A value that is missing is never averaged and
never left unexplained: its reason (:data:`~lre_pl.protocol.rows.MISSING_REASONS`, or "not run" for a
task the config lists and the folder lacks) is in its cell and in the summary's list of missing values.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from lre_pl.dataset.relations import CATEGORIES
from lre_pl.evaluation.causality import EDIT_TARGETS
from lre_pl.files import write_text_atomically
from lre_pl.lightning.outputs import write_figure
from lre_pl.protocol.folder import SweepFolder
from lre_pl.protocol.markdown import markdown_table, mean_std_cell, nanmean
from lre_pl.protocol.rows import MISSING_REASONS, read_rows, write_rows_csv

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
#: A value the folder lacks for a task with no rows at all.
NOT_RUN = "not run: the config lists it, the folder has no rows for it"
#: A value missing from a task's rows with no reason row (rows of a sweep older than the reasons).
UNEXPLAINED = "missing without a recorded reason"

Task = tuple[str, int]  # (relation, trial)


def short(reason: str) -> str:
    """A reason's words before their colon: what a table cell has room for."""
    return reason.split(":")[0]


class SweepResults:
    """Indexes of the rows that the tables and figures read. ``listed``: the (relation, trial) tasks the
    sweep's config lists (default: those with rows), so that a task without rows is named, not skipped."""

    def __init__(self, rows: list[dict], listed: Sequence[Task] | None = None):
        self.rows = rows
        self.run = {(row["relation"], row["trial"]) for row in rows}
        self.listed = sorted(self.run | set(listed or ()), key=lambda task: (task[0], task[1]))
        self.trials = sorted({trial for _, trial in self.listed})
        self.trials_of = defaultdict(list)  # relation -> its listed trials
        for relation, trial in self.listed:
            self.trials_of[relation].append(trial)
        self.category = {row["relation"]: row["category"] for row in rows}
        self.counts = {
            (row["relation"], row["trial"], row["metric"]): row["value"]
            for row in rows
            if row["kind"] == "count"
        }
        self.reasons = defaultdict(list)  # (relation, trial) -> its reason rows' metrics
        for row in rows:
            if row["kind"] == "count" and row["metric"] in MISSING_REASONS:
                self.reasons[row["relation"], row["trial"]].append(row["metric"])
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
        return sorted({relation for relation, _ in self.listed})

    def not_run(self) -> list[Task]:
        """The tasks the config lists and the folder has no rows for."""
        return [task for task in self.listed if task not in self.run]

    def in_category(self, category: str | None) -> list[str]:
        """The relations of ``category`` (every relation for ``None``) that have rows."""
        return [r for r in self.relations if r in self.category and category in (None, self.category[r])]

    def value(self, relation, trial, estimator, selection, split, metric) -> float:
        row = self.selected.get((relation, trial, estimator, selection, split, metric))
        return row["value"] if row else float("nan")

    def missing_reason(self, relation: str, trial: int, metric: str) -> str:
        """Why (relation, trial) has no value of ``metric``: its reason row's words, else "not run"."""
        for code in self.reasons.get((relation, trial), []):
            metrics, words = MISSING_REASONS[code]
            if metrics is None or metric in metrics:
                return words
        return UNEXPLAINED if (relation, trial) in self.run else NOT_RUN

    def chosen_per_trial(self, relation: str, metric: str, field: str, fmt: str = "") -> str:
        """The LRE's dev-chosen ``field`` (layer, beta, rank) for ``metric`` in each trial: ``8/9/–``."""
        rows = [
            self.selected.get((relation, t, "lre", "dev", "test", metric)) for t in self.trials_of[relation]
        ]
        return "/".join("–" if row is None else format(row[field], fmt) for row in rows)

    def relation_cell(self, relation: str, column: tuple, metric: str, fmt: str = ".2f") -> str:
        """Mean ± std over the trials that have a value, then each other trial's reason."""
        _, estimator, selection, split = column
        values = {
            t: self.value(relation, t, estimator, selection, split, metric) for t in self.trials_of[relation]
        }
        cell = mean_std_cell(list(values.values()), fmt)
        absent = [t for t, value in values.items() if math.isnan(value)]
        if not absent:
            return cell
        reasons = defaultdict(list)
        for t in absent:
            reasons[short(self.missing_reason(relation, t, metric))].append(str(t))
        why = "; ".join(
            (f"{reason}" if len(trials) == len(values) else f"trial {', '.join(trials)}: {reason}")
            for reason, trials in reasons.items()
        )
        return f"{cell} ({why})"

    def category_cells(self, columns, metric: str) -> list[list[str]]:
        """Per category (and all): its relations with rows / listed, then per column the mean over the
        relations with a value per trial, ± std over trials, and how many relations and bundles that is."""
        table = []
        for category in [*CATEGORIES, None]:
            relations = self.in_category(category)
            if not relations:
                continue
            cells = [category or "**all**", str(len(relations))]
            for _, estimator, selection, split in columns:
                values = {
                    (r, t): self.value(r, t, estimator, selection, split, metric)
                    for r in relations
                    for t in self.trials_of[r]
                }
                present = [task for task, value in values.items() if not math.isnan(value)]
                if not present:
                    reasons = sorted({short(self.missing_reason(r, t, metric)) for r, t in values})
                    cells.append(f"– (none of {len(relations)}: {'; '.join(reasons)})")
                    continue
                per_trial = [nanmean(v for (_, at), v in values.items() if at == t) for t in self.trials]
                counted = f"{len({r for r, _ in present})} rel., {len(present)} bundles"
                cells.append(f"{mean_std_cell(per_trial)} ({counted})")
            table.append(cells)
        return table

    def missing_values(self, metrics: Sequence[str]) -> list[str]:
        """One line per relation and reason: the trials whose LRE has no value of ``metrics``."""
        lines = defaultdict(lambda: defaultdict(list))  # relation -> reason -> trials
        for relation in self.relations:
            for metric in metrics:
                for t in self.trials_of[relation]:
                    if math.isnan(self.value(relation, t, "lre", "dev", "test", metric)):
                        lines[relation][f"{metric}: {self.missing_reason(relation, t, metric)}"].append(t)
        return [
            f"- {relation} ({self.category.get(relation, 'no rows')}), trial "
            f"{', '.join(map(str, sorted(set(trials))))}: {reason}"
            for relation, reasons in lines.items()
            for reason, trials in reasons.items()
        ]


def _columns(columns, config, causal: bool) -> list[tuple]:
    """The columns the config measured (its estimators, emb among its layers, its ranks, its comparison
    edits): what it did not measure is no column of empty cells (the coverage lines give the config's
    estimators, layers, ranks and comparison edits)."""
    kept = []
    for column in columns:
        estimator = column[1]
        if causal:
            measured = bool(config.ranks) if estimator == "lre" else config.comparison_edits
        elif estimator == "lre_emb":
            measured = config.layers == "all" or "emb" in [str(layer) for layer in config.layers]
        else:
            measured = estimator in config.estimators
        if measured:
            kept.append(column)
    return kept


def coverage_lines(results: SweepResults, config) -> list[str]:
    """What the summary covers: model, relations, trials, grid, known-sample cap, edit targets, and
    every task the config lists that the folder lacks."""
    evaluated = {r for r, t in results.run if "too_few_known" not in results.reasons.get((r, t), [])}
    cap = f"at most {config.max_known} (a seeded subset)" if config.max_known else "all"
    rule = config.edit_targets
    lines = [
        f"- **model** {config.model}; **relations** {len(results.relations)} listed, "
        f"{len(results.category)} with rows, {len(evaluated)} evaluated in at least one trial; "
        f"**trials** (seeds) {', '.join(map(str, results.trials))}",
        f"- **grid**: layers {config.layers}, layer chosen at β {config.layer_search_beta}, β "
        f"{min(config.betas)}..{max(config.betas)} ({len(config.betas)} values), causality ranks "
        f"{config.ranks or 'none'}, comparison edits {'yes' if config.comparison_edits else 'no'}, "
        f"estimators {', '.join(config.estimators)}, n_train {config.n_train}",
        f"- **known test samples per relation**: {cap}, at least {config.min_known} to be evaluated; "
        f"dev split {config.dev_fraction:.0%} of them",
        f"- **edit targets**: {rule} ("
        + ("the paper's: among the known samples)" if rule == "known" else
           "wider than the paper: every test sample of the relation; metric efficacy_relation_targets)"),
    ]  # fmt: skip
    missing = results.not_run()
    lines.append(
        f"- **listed but not in the folder** ({len(missing)} of {len(results.listed)} tasks): "
        + (", ".join(f"{r} trial {t}" for r, t in missing) if missing else "none")
    )
    return lines


def summary_markdown(results: SweepResults, config) -> str:
    """The summary page: what it covers, by category, by relation, then every missing value and why."""
    efficacy = EDIT_TARGETS[config.edit_targets]
    parts = [
        f"# LRE sweep: {config.model}\n",
        *coverage_lines(results, config),
        "",
        "Hyper-parameters are chosen on a dev split of each relation's known test samples and reported on "
        "the rest; the paper's way (chosen on the very samples reported) is the column so marked. Cells: "
        "mean over the category's relations that have a value, then mean ± std over trials; in brackets, "
        "how many relations and (relation, trial) bundles the cell averages. Missing values are listed "
        "with their reason at the end, never averaged.\n",
        "## Faithfulness@1 by category\n",
    ]
    faithful = _columns(FAITHFULNESS_COLUMNS, config, causal=False)
    parts.append(
        markdown_table(
            ["category", "relations", *(c[0] for c in faithful)],
            results.category_cells(faithful, "faithfulness@1"),
        )
    )
    causal = _columns(CAUSALITY_COLUMNS, config, causal=True)
    targets = "the paper's: among known samples" if efficacy == "efficacy" else "every test sample"
    if causal:
        parts += [
            f"## Causality (efficacy; targets: {targets}) by category\n",
            markdown_table(
                ["category", "relations", *(c[0] for c in causal)], results.category_cells(causal, efficacy)
            ),
        ]
    else:
        parts.append("## Causality\n\nNot measured: the config has no ranks and no comparison edits.\n")
    parts.append("## By relation (LRE, chosen on dev, reported on test; layer, β and rank per trial)\n")
    lre = FAITHFULNESS_COLUMNS[0]
    rows = []
    for relation in results.relations:
        trials = results.trials_of[relation]
        known = [results.counts.get((relation, t, "known_test_samples"), math.nan) for t in trials]
        accuracy = [results.counts.get((relation, t, "lm_accuracy"), math.nan) for t in trials]
        run = relation in results.category  # else no trial of it has rows: every cell says so
        cells = [
            relation,
            results.category.get(relation, "– (not run)"),
            mean_std_cell(known, ".0f") if run else "– (not run)",
            mean_std_cell(accuracy) if run else "– (not run)",
            results.relation_cell(relation, lre, "faithfulness@1"),
            results.chosen_per_trial(relation, "faithfulness@1", "layer"),
            results.chosen_per_trial(relation, "faithfulness@1", "beta", "g"),
        ]
        if causal:
            cells += [
                results.relation_cell(relation, lre, efficacy),
                results.chosen_per_trial(relation, efficacy, "rank"),
            ]
        rows.append(cells)
    headings = ["relation", "category", "known", "LM acc.", "faithfulness@1", "layer", "beta"]
    parts.append(markdown_table(headings + (["efficacy", "rank"] if causal else []), rows))
    parts.append(
        "Per-trial columns (layer, β, rank) list each trial in order; `–` where that trial has no value "
        "(its reason is in the cell beside and in the list below).\n"
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
    parts.append(
        "## Missing values and why\n\n"
        f"Every (relation, trial) whose LRE has no test value, with the reason (at least {config.min_known} "
        "known test samples are needed to evaluate a relation).\n"
    )
    lines = results.missing_values(["faithfulness@1", *([efficacy] if causal else [])])
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
    for relation in results.in_category(None):
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


def write_report(root: Path, row_paths: list[Path], config, listed: Sequence[Task] = ()) -> None:
    """results.csv, summary.md and the figures (PNG + TensorBoard) of every existing row file;
    ``listed``: the tasks the config asks for (those without rows are named in the summary)."""
    rows = read_rows(row_paths)
    if rows:
        write_rows_csv(SweepFolder(root).results, rows)
        write_summary(root, rows, config, listed)


def write_summary(
    root: Path, rows: list[dict], config, listed: Sequence[Task] = (), tensorboard: bool = True
) -> None:
    """summary.md and the figures in ``root`` from ``rows``: PNGs, and a TensorBoard log unless
    ``tensorboard`` is false (a committed ``results/`` folder keeps none)."""
    from torch.utils.tensorboard import SummaryWriter

    results, folder = SweepResults(rows, listed), SweepFolder(root)
    summary = summary_markdown(results, config)
    write_text_atomically(folder.summary, summary)
    experiment = SummaryWriter(str(folder.tensorboard)) if tensorboard else None
    if experiment:
        experiment.add_text("summary", summary)
    for name, figure in plot_figures(results, config).items():
        write_figure(figure, folder.figure(name), experiment)
    if experiment:
        experiment.close()
