"""The distracted-lens report: per model, the readers' recall@1 by prompt kind, per category and per
relation, a figure, and example tokens; over the models, one markdown file (``docs/attribute_lens.md``)."""

from __future__ import annotations

import contextlib
import gzip
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from lre_pl.experiments.attribute_lens.distracted import UNDISTRACTED
from lre_pl.experiments.sweep.finished import FinishedSweep
from lre_pl.files import write_bytes_atomically, write_text_atomically
from lre_pl.lightning.outputs import write_figure
from lre_pl.protocol.folder import LensFolder, model_file_name, results_folder
from lre_pl.protocol.markdown import markdown_table, nanmean
from lre_pl.protocol.rows import read_rows, write_rows_csv

#: The report's columns: (reader, target) and their headings.
COLUMNS = (
    ("lm", "object", "LM: o"),
    ("lm", "distractor", "LM: o′"),
    ("lre", "object", "attribute lens: o"),
    ("lre", "distractor", "attribute lens: o′"),
    ("logit_lens", "object", "logit lens: o"),
)

Key = tuple[str, str, str]  # (prompt kind, reader, target)


def prompt_kind(row: dict) -> str:
    return row["kind"].split(":", 1)[1]


def by_relation(rows: Sequence[dict]) -> dict[str, dict[Key, dict]]:
    """{relation: {(prompt kind, reader, target): its row}}."""
    table: dict[str, dict[Key, dict]] = defaultdict(dict)
    for row in rows:
        table[row["relation"]][prompt_kind(row), row["estimator"], row["metric"].split()[-1]] = row
    return dict(table)


def kinds_of(rows: Sequence[dict]) -> list[str]:
    """The prompt kinds, the reference first."""
    kinds = list(dict.fromkeys(prompt_kind(row) for row in rows))
    return sorted(kinds, key=lambda kind: kind != UNDISTRACTED)


def cell(value: float) -> str:
    return "–" if value != value else f"{value:.2f}"


def summary_table(rows: Sequence[dict], group: str | None = None) -> str:
    """Mean recall@1 over relations (relations weigh alike), one row per prompt kind, or per (group,
    prompt kind) with ``group`` a row field such as ``category``."""
    relations = by_relation(rows)
    groups: dict[str, list[str]] = defaultdict(list)
    for relation, cells in relations.items():
        first = next(iter(cells.values()))
        groups[first[group] if group else "all"].append(relation)
    headings = ([group] if group else []) + ["prompt", "relations", "samples"] + [h for _, _, h in COLUMNS]
    lines = []
    for name, members in sorted(groups.items()):
        for kind in kinds_of(rows):
            present = [relations[r] for r in members if (kind, "lm", "object") in relations[r]]
            samples = sum(cells[kind, "lm", "object"]["n"] for cells in present)
            means = [
                nanmean(cells[kind, reader, target]["value"] for cells in present)
                for reader, target, _ in COLUMNS
            ]
            lines.append(
                ([name] if group else []) + [kind, str(len(present)), str(samples)] + [cell(m) for m in means]
            )
    return markdown_table(headings, lines)


def relation_table(rows: Sequence[dict]) -> str:
    """One line per (relation, prompt kind): the layer and β read, the samples and every reader's recall@1."""
    headings = ["relation", "layer", "β", "samples", "prompt"] + [h for _, _, h in COLUMNS]
    lines = []
    for relation, cells in sorted(by_relation(rows).items()):
        for kind in kinds_of(rows):
            if (kind, "lm", "object") not in cells:
                continue
            first = cells[kind, "lm", "object"]
            values = [cell(cells[kind, reader, target]["value"]) for reader, target, _ in COLUMNS]
            lines.append(
                [relation, str(first["layer"]), f"{first['beta']:g}", str(first["n"]), kind, *values]
            )
    return markdown_table(headings, lines)


def lens_figure(rows: Sequence[dict], model: str):
    """One panel per prompt kind: per relation, the LM's recall@1 of o and o′, and the attribute and
    logit lenses' recall@1 of o, as grouped bars."""
    from matplotlib import pyplot as plt

    relations = by_relation(rows)
    names = sorted(relations)
    kinds = kinds_of(rows)
    shown = [c for c in COLUMNS if c[:2] != ("lre", "distractor")]
    figure, axes = plt.subplots(
        len(kinds), 1, figsize=(max(6.0, 0.45 * len(names) + 2), 2.6 * len(kinds)), squeeze=False, sharex=True
    )
    width = 0.8 / len(shown)
    for axis, kind in zip(axes[:, 0], kinds):
        for index, (reader, target, heading) in enumerate(shown):
            values = [
                relations[n].get((kind, reader, target), {"value": float("nan")})["value"] for n in names
            ]
            axis.bar(
                [i + (index - (len(shown) - 1) / 2) * width for i in range(len(names))],
                values,
                width,
                label=heading,
            )
        axis.set_ylim(0, 1)
        axis.set_ylabel("recall@1")
        axis.set_title(f"{model}: {kind} prompts", fontsize=9)
    axes[-1, 0].set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=7)
    axes[0, 0].legend(fontsize=7, ncol=len(shown), loc="upper left", bbox_to_anchor=(0, 1.35))
    figure.tight_layout()
    return figure


def figure_name(model: str) -> str:
    return f"attribute_lens_{model_file_name(model)}.png"


def model_section(rows: Sequence[dict], model: str, tables: Sequence[str], examples: int) -> list[str]:
    lines = [f"## {model}", "", "### By prompt kind (mean over relations)", "", summary_table(rows)]
    at_blocks = [row for row in rows if row["layer"] != "emb"]
    if at_blocks and len(at_blocks) < len(
        rows
    ):  # a state at emb is the token's embedding: no prompt moves it
        lines += [
            "### By prompt kind, the relations read at a block (not at emb)",
            "",
            summary_table(at_blocks),
        ]
    lines += ["### By category", "", summary_table(rows, "category")]
    lines += ["### By relation", "", relation_table(rows)]
    lines += [f"![attribute lens on distracted prompts, {model}]({figure_name(model)})", ""]
    if tables and examples:
        lines += [f"### Examples: the first {examples} samples of the first relations", ""]
        lines += [text for text in tables[:3]]
    return lines


def write_lens_report(
    studied: Sequence[tuple[FinishedSweep, Path, list[str]]], config, made_by: Sequence[str]
) -> None:
    """Each lens folder's ``results.csv``, figure and ``attribute_lens.md``, and ``config.report`` over
    every model (figures beside it), from the rows alone; TensorBoard gets the text and the figure.
    ``studied``: each sweep, its lens folder and the relations it did not evaluate."""
    from torch.utils.tensorboard import SummaryWriter

    sections, covered, commands = [], [], []
    for sweep, out, left_out in studied:
        folder = LensFolder(out)
        rows = read_rows(folder.row_files())
        if not rows:
            continue
        write_rows_csv(folder.results, rows)
        model = rows[0]["model"]
        cap = sweep.config.get("max_known")
        tables = folder.tables()
        section = model_section(rows, model, tables, config.examples)
        sweep_commands = [f"{model}'s sweep: `{line}`" for line in sweep.folder.read_commands()]
        commands += sweep_commands
        covered.append(
            f"- **{model}**: {len(by_relation(rows))} relations, trial {config.trial}, every known test "
            f"sample{f' (at most {cap}, seeded, as the sweep evaluated them)' if cap else ''}, each relation "
            f"read at the layer and β its sweep chose on dev"
            + (
                f"; left out, with no evaluated bundle in the sweep (not swept, or too few known samples): {', '.join(left_out)}"
                if left_out
                else ""
            )
            + "."
        )
        header = report_header([*sweep_commands, *made_by], [covered[-1]], config)
        write_text_atomically(folder.report, "\n".join([*header, *section]))
        figure = folder.path(figure_name(model))
        with contextlib.closing(SummaryWriter(str(folder.tensorboard))) as experiment:
            experiment.add_text("attribute_lens", folder.report.read_text())
            write_figure(lens_figure(rows, model), figure, experiment)  # the PNG and TensorBoard's image
        sections += [section]
        if config.report:
            write_bytes_atomically(Path(config.report).parent / figure.name, figure.read_bytes())
    if config.report and sections:
        header = report_header([*commands, *made_by], covered, config)
        closing = (
            ["## In plain words", "", Path(config.conclusion).read_text(encoding="utf-8")]
            if config.conclusion
            else []
        )
        text = "\n".join([*header, *(line for s in sections for line in s), *closing])
        write_text_atomically(Path(config.report), text)


def report_header(commands: Sequence[str], covered: Sequence[str], config) -> list[str]:
    templates = "; ".join(f"**{name}**: `{template}`" for name, template in config.templates.items())
    return [
        "# The attribute lens on distracted prompts",
        "",
        "Made by " + "; ".join(commands) + ".",
        "",
        *covered,
        "",
        "For each known test sample (s, o), a prompt pushes the LM toward a wrong object o′ (another "
        f"sample's object, drawn with seed {config.seed}, whose first letter differs from o's): {templates}. "
        "`{false}` is the relation's statement about s with o′ as its object, `{query}` the relation's query "
        "about s; the query alone is the reference (`undistracted`). Recall@1: the top-1 token starts the "
        "object (the protocol's prefix match). The LM reads its own next token; the attribute lens reads "
        "decode(β W h + b) and the logit lens decode(h), both at the query's subject's last token, at the "
        "relation's dev-chosen layer. Where that layer is `emb`, the state is the subject token's embedding, "
        "which no prompt changes: there the lens cannot be distracted, by construction, and the logit lens "
        "reads the token itself; the tables without those relations are given too. The undistracted query "
        "has no in-context examples, so the LM's recall there is below its recall on the sweep's few-shot "
        "prompts, on which every sample was known.",
        "",
    ]


def copy_results(out: Path, results_dir: Path) -> Path | None:
    """A lens folder's rows (gzipped), report and figure to ``results_dir/<model>/`` (what a repository
    commits)."""
    folder = LensFolder(out)
    table = folder.results
    if not table.exists():
        return None
    rows = read_rows(folder.row_files())
    target = results_folder(results_dir, rows[0]["model"])
    target.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(target / "results.csv.gz", gzip.compress(table.read_bytes(), mtime=0))
    for path in [folder.report, *sorted(out.glob("*.png"))]:
        write_bytes_atomically(target / path.name, path.read_bytes())
    return target
