"""The β study's report, from the study's rows alone: it assembles the header, the answers table (every
question's headline lines), the three answers in words, and each question's section in the registry's
order (:mod:`lre_pl.experiments.beta_study.questions`: each question summarizes and renders its own).

Questions that test an explanation of β (those with a ``hypothesis``) open the report with the
hypotheses table instead (hypothesis, its prediction, what was measured on each model, the verdict),
and close it with the verdicts gathered and the conclusion written from them (``docs/explaining_beta.md``).
"""

from __future__ import annotations

import contextlib
import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from lre_pl.experiments.beta_study.questions import REGISTRY
from lre_pl.experiments.beta_study.questions.base import (
    NAN,
    PAPER_BETA,
    VERDICTS,
    Findings,
    HeadlineLine,
    paper_lre,
)
from lre_pl.experiments.beta_study.questions.global_beta import by_category
from lre_pl.experiments.sweep.runner import listed_tasks
from lre_pl.files import inside, write_text_atomically
from lre_pl.lightning.outputs import write_figure
from lre_pl.protocol.folder import StudyFolder, read_json
from lre_pl.protocol.intervals import paired_difference
from lre_pl.protocol.markdown import markdown_table
from lre_pl.protocol.rows import read_rows, read_rows_csv, write_rows_csv
from lre_pl.protocol.selection import SelectionRule


class ModelStudy(NamedTuple):
    """One model's study, as the report reads it: its rows, its markdown tables per question, the
    questions answered (a question can have no rows: too few trials), and its sweep's selection rule."""

    rows: list[dict]
    tables: dict[str, list[str]]
    answered: Sequence[str]
    rule: SelectionRule


def model_sections(
    rows: list[dict],
    rule: SelectionRule,
    tables: dict[str, list[str]] | None = None,
    answered: Sequence[str] = (),
) -> tuple[dict[str, str], dict]:
    """One model's study: {question: markdown (table and verdict)} and the numbers (by question name,
    and the counts of ``bundles`` and ``relations``). ``tables``: markdown per question (token tables);
    ``answered``: questions whose row files exist (a question can have no rows: too few trials)."""
    by_kind = defaultdict(list)
    for row in rows:
        by_kind[row["kind"]].append(row)
    questions = [question() for name, question in REGISTRY.items() if name in by_kind or name in answered]
    numbers = {question.name: question.summarize(by_kind[question.name], rule) for question in questions}
    findings = Findings(rows[0]["model"] if rows else "", rule, numbers, tables or {})
    sections = {question.name: question.render(numbers[question.name], findings) for question in questions}
    numbers["bundles"] = len({(row["relation"], row["trial"]) for row in rows if row["trial"] is not None})
    numbers["relations"] = len({row["relation"] for row in rows if row["relation"] is not None})
    return sections, numbers


def _grid_line(
    model: str, rows: list[dict], sweep: dict | None, relations: Sequence[str] | None = None
) -> str:
    """One line on what a model's study covers: relations, bundles and their trials, known samples and
    their cap (the sweep's ``max_known``), the sweep's grid, and what the sweep's config lists that the
    study lacks. ``relations``: the study's own choice of the sweep's relations (its config's
    ``relations``; ``None``: all of them): the others are counted as left out by choice, not named as
    missing."""
    bundles = {(row["relation"], row["trial"]) for row in rows if row["trial"] is not None}
    known = sorted(row["n"] for row in rows if row["kind"] == "residual" and row["split"] == "all"
                   and row["metric"] == "residual_norm")  # fmt: skip
    per_relation = Counter(Counter(relation for relation, _ in bundles).values())  # trials -> relations
    spread = ", ".join(f"{relations} with {trials}" for trials, relations in sorted(per_relation.items()))
    line = (
        f"**{model}**: {len({r for r, _ in bundles})} relations, {len(bundles)} bundles, trials "
        f"{sorted({t for _, t in bundles})} (relations by their number of trials: {spread or 'none'})"
    )
    if known:
        line += f", {statistics.median(known):.0f} known samples per bundle (median; {known[0]}–{known[-1]})"
    if sweep:
        line += (
            f", the sweep's cap on known samples per bundle (max_known): {sweep.get('max_known') or 'none'}"
        )
        betas = sweep["betas"]
        layers = (
            "every layer" if sweep["layers"] == "all" else f"layers {', '.join(map(str, sweep['layers']))}"
        )
        line += f"; the sweep's grid: {layers}, β {min(betas)}..{max(betas)} ({len(betas)} values)"
        if "relations" in sweep and "trials" in sweep:
            listed = listed_tasks(sweep["relations"], sweep["trials"])
            if relations is not None:
                swept = {relation for relation, _ in listed}
                listed = [(relation, trial) for relation, trial in listed if relation in relations]
                line += (
                    f"; the study's relations (`relations`): {len({r for r, _ in listed})} of the "
                    f"sweep's {len(swept)}"
                )
            lacking = sorted(set(listed) - bundles)
            line += "; listed by the sweep's config but not studied (too few known samples, or not run): " + (
                ", ".join(f"{relation} trial {trial}" for relation, trial in lacking) if lacking else "none"
            )
    return line + "."


#: The answers table's first line: what the study covers.
COVERAGE = HeadlineLine(
    0, "bundles (relation × trial) / relations", lambda m: f"{m['bundles']} / {m['relations']}"
)


def _headline_table(numbers: dict[str, dict]) -> str:
    """The answers, one column per model: what each question's verdict rests on (its headline lines)."""
    lines = sorted(
        [COVERAGE, *(line for question in REGISTRY.values() for line in question.headline)],
        key=lambda line: line.order,
    )
    models = list(numbers)
    return markdown_table(
        ["", *models], [[line.label, *(line.cell(numbers[m]) for m in models)] for line in lines]
    )


def _one_global_beta(found: dict) -> str:
    """The answer to "one global β?" from the ``global_beta`` numbers: each single β against each
    relation's own, with its interval."""
    one, per_relation = found["oracle:global:test"], found["oracle:relation:test"]
    oracle = paired_difference(one["by_bundle"], per_relation["by_bundle"])
    worst, loss = min(by_category(one, per_relation).items(), key=lambda item: item[1].estimate)
    learned, held = found.get("learned:global:dev", {}), found.get("heldout:global:dev", {})
    grid, paper = found.get("grid:global:dev", {}), found.get(f"paper_{PAPER_BETA}", {})
    compared = [
        (f"a β learned by trainer.fit on every relation's dev samples ({learned.get('beta', NAN):.2f})", learned),
        ("learned on half of the relations, on the other half", held),
        ("one β per category, learned on dev", found.get("learned:category:dev", {})),
        (f"the grid's best single β on dev ({grid.get('beta', NAN):.2f})", grid),
        (f"the paper's β = {PAPER_BETA}", paper),
    ]  # fmt: skip
    return (
        f"**One global β?** Both chosen on the reported test samples (the paper's way), one β "
        f"({one.get('beta', NAN):.2f}) reaches {one['mean']:.3f} against {per_relation['mean']:.3f} with one β per "
        f"relation: {oracle.difference_words()} (worst category: {worst}, {loss.cell()}; an upper bound on the "
        "loss, as each relation's own β is fitted to its few test samples). Without looking at test, against each "
        "relation's dev-chosen β: "
        + "; ".join(f"{label}: {variant['vs_best'].difference_words()}" for label, variant in compared if variant)
        + "."
    )  # fmt: skip


def _variants_remove_beta(numbers: dict) -> str | None:
    """The answer to "does a variant remove β?": each variant at β = 1 against the paper's LRE at its
    dev-chosen β, per bundle with its interval; ``None`` without the numbers."""
    paper = paper_lre(numbers)
    candidates = {
        f"b = {name}": values
        for name, values in numbers.get("bias_variants", {}).get("variants", {}).items()
        if name != "paper"
    }
    candidates |= {
        name: values
        for key in ("unit_s", "after_norm")
        for name, values in numbers.get(key, {}).get("variants", {}).items()
    }
    if not candidates or not paper:
        return None
    against = {
        name: paired_difference(values["beta_1_by_bundle"], paper["chosen_by_bundle"])
        for name, values in candidates.items()
    }
    # Removing β is a claim of no loss, which an interval can only fail to refute: a variant is kept when
    # its loss is not detectable (the interval reaches 0), and its lower end says how large a loss it hides.
    removes = [name for name, d in against.items() if not (d.detectable and d.estimate < 0)]
    each = "; ".join(f"{name}: {d.difference_words()}" for name, d in against.items())
    answer = (
        f"Not ruled out for {', '.join(removes)}: at β = 1 {'it is' if len(removes) == 1 else 'they are'} not "
        "detectably below the LRE at its tuned β (no proof of no loss: the interval's lower end bounds the loss "
        "still possible)"
        + ("; every other variant is detectably below." if len(removes) < len(against) else ".")
        if removes
        else "No: every variant at β = 1 is detectably below the LRE at its tuned β."
    )
    return (
        f"**Does a variant remove β?** {answer} Each at β = 1 minus the LRE at its dev-chosen β "
        f"({paper['chosen']:.3f}): {each}."
    )


def _verdicts(model: str, numbers: dict) -> str:
    """The three answers the study exists for, in words, from one model's numbers (by question name)."""
    lines = []
    found = numbers.get("global_beta", {})
    if found.get("oracle:global:test") and found.get("oracle:relation:test"):
        lines.append(_one_global_beta(found))
    removes = _variants_remove_beta(numbers)
    if removes:
        lines.append(removes)
    residual = numbers.get("residual", {})
    if residual:
        lines.append(
            f"**How much of b is ε?** On known test samples ‖ε‖ = {residual.get('residual_over_bias', NAN):.2f} ‖b‖, "
            f"and {residual.get('residual_share_along_bias', NAN):.0%} of ‖ε‖² lies along b: shrinking b (1/β on b, "
            "which is β on W s) removes that share at most."
        )
    if not lines:
        return ""
    return f"\n**{model}**\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"


def _hypotheses(sections: dict[str, dict[str, str]]) -> list[str]:
    """The names of the answered questions that test a hypothesis, in the registry's order."""
    return [
        name
        for name, question in REGISTRY.items()
        if question.hypothesis and any(name in answered for answered in sections.values())
    ]


def _hypotheses_table(names: Sequence[str], numbers: dict[str, dict]) -> str:
    """One line per hypothesis: it, its prediction, what was measured on each model, the verdict."""
    models = list(numbers)
    lines = []
    for name in names:
        question = REGISTRY[name]()
        answered = [model for model in models if name in numbers[model]]
        measured = "; ".join(f"{model}: {question.measured(numbers[model][name])}" for model in answered)
        verdicts = {model: question.judge(numbers[model][name]) for model in answered}
        words = {verdict.word for verdict in verdicts.values()}
        if len(words) == 1:
            cell = f"**{words.pop()}**: " + "; ".join(f"{model}: {v.why}" for model, v in verdicts.items())
        else:
            cell = "; ".join(f"**{v.word}** on {model}: {v.why}" for model, v in verdicts.items())
        lines.append([f"{question.number}. {question.hypothesis}", question.prediction, measured, cell])
    return markdown_table(
        ["hypothesis", "its prediction", f"what was measured ({' / '.join(models)})", "verdict"], lines
    )


def _verdicts_gathered(names: Sequence[str], numbers: dict[str, dict]) -> str:
    """Each verdict word with the hypotheses that got it, per model (the closing section's first lines)."""
    lines = []
    for model, by_name in numbers.items():
        got = {word: [] for word in VERDICTS}
        for name in (name for name in names if name in by_name):
            question = REGISTRY[name]()
            got[question.judge(by_name[name]).word].append(f"{question.number}")
        listed = "; ".join(f"{word}: {', '.join(found) or 'none'}" for word, found in got.items())
        lines.append(f"- **{model}**: {listed}.")
    return "\n".join(lines) + "\n"


def study_markdown(studies: dict[str, ModelStudy], made_by: Sequence[str] = (),
                   settings: Sequence[str] = (), conclusion: str | None = None) -> tuple[str, dict[str, dict]]:  # fmt: skip
    """The report over one or more models' studies: the headline numbers side by side (or, for
    questions that test a hypothesis, the hypotheses table), then per question each model's table and
    verdict; ``conclusion`` (markdown, written from the numbers) closes a report of hypotheses."""
    sections, numbers = {}, {}
    for model, study in studies.items():
        sections[model], numbers[model] = model_sections(study.rows, study.rule, study.tables, study.answered)
    models = list(studies)
    hypotheses = _hypotheses(sections)
    explains = bool(hypotheses) and all(
        name in hypotheses for answered in sections.values() for name in answered
    )  # only questions that test a hypothesis: the report of β's explanation
    title = "Explaining β" if explains else "The β study"
    parts = [f"# {title}: {', '.join(models)}\n"]
    if made_by:
        parts.append("Made by " + "; ".join(made_by) + ".\n")
    parts.append(
        "Every bundle is read at the LRE's layer chosen on its dev split; β is chosen on the dev split and "
        "faithfulness is reported on the test split (known samples only).\n"
    )
    parts += [f"- {line}" for line in settings] + ([""] if settings else [])
    if hypotheses:
        parts += ["## The hypotheses\n", _hypotheses_table(hypotheses, numbers)]
    if not explains:
        parts += [
            "## The answers\n",
            _headline_table(numbers),
            *(_verdicts(model, numbers[model]) for model in models),
        ]
    for name, question in REGISTRY.items():
        answered = [model for model in models if name in sections[model]]
        if not answered:
            continue
        parts.append(f"## {question.number}. {question.title}\n")
        for model in answered:
            if len(models) > 1:
                parts.append(f"### {model}\n")
            parts.append(sections[model][name])
    if hypotheses:
        parts += ["## What explains β\n", _verdicts_gathered(hypotheses, numbers)]
        if conclusion:
            parts.append(conclusion.strip() + "\n")
    return "\n".join(parts), numbers


def committed_study(
    folder: Path, answered: Sequence[str] | None = None, relations: Sequence[str] | None = None
) -> tuple[ModelStudy, str, str]:
    """A study as ``results/`` keeps it (``results.csv.gz``, ``sweep_config.json``, ``sweep_command.txt``;
    no study folder, no bundles): the :class:`ModelStudy`, what made its sweep ("<model>'s sweep: …")
    and its grid line. ``answered``: the questions asked (default: those with rows, and across_trials,
    which has none with one trial); ``relations``: the study config's choice of relations."""
    rows = read_rows_csv(folder / "results.csv.gz")
    sweep = json.loads((folder / "sweep_config.json").read_text())
    if answered is None:
        answered = sorted({row["kind"] for row in rows} | {"across_trials"})
    model = rows[0]["model"]
    made_by = _sweep_made_by(model, (folder / "sweep_command.txt").read_text().splitlines())
    study = ModelStudy(rows, {}, list(answered), SelectionRule.of_sweep(sweep))
    return study, made_by, _grid_line(model, rows, sweep, relations)


def _sweep_made_by(model: str, commands: Sequence[str]) -> str:
    """``<model>'s sweep: `cmd`, then `cmd```: what made a model's sweep, in a report's "Made by"."""
    return f"{model}'s sweep: " + (", then ".join(f"`{line}`" for line in commands) or "–")


def write_study_report(
    outs: Sequence[Path],
    report: str | None = None,
    made_by: Sequence[str] = (),
    conclusion: str | None = None,
    notes: Sequence[str] = (),
    relations: Sequence[str] | None = None,
) -> None:
    """``<out>/beta_study.md`` and ``<out>/results.csv`` (every row) for each study folder (its model
    alone) and, if given, ``report`` over all of them, each with its figures beside it (and, per
    folder, in its TensorBoard log), from the folders' rows alone. Each folder's ``sweep_command.txt``
    (the sweep's commands) opens the list of what made the report; ``conclusion`` (markdown) closes a
    report of hypotheses; ``notes`` are lines beside the grids' (what the study covered); ``relations``: the
    study config's choice of relations (:func:`_grid_line`)."""
    studies, commands, folders, grids = {}, {}, {}, {}
    for out in outs:
        folder = StudyFolder(out)
        rows = read_rows(folder.row_files())
        if not rows:
            continue
        write_rows_csv(folder.results, rows)  # every question's rows in one tidy table
        model = rows[0]["model"]
        folders[model] = out
        sweep = read_json(
            folder.sweep_config, "rerun lre-pl beta-study, which copies the sweep's config there"
        )
        studies[model] = ModelStudy(rows, folder.tables(), folder.answered(), SelectionRule.of_sweep(sweep))
        lines = folder.sweep_commands.read_text().splitlines() if folder.sweep_commands.exists() else []
        commands[model] = _sweep_made_by(model, lines)
        grids[model] = _grid_line(model, rows, sweep, relations)
        if folder.unfinished.exists():  # a sweep studied unfinished, on purpose
            grids[model] += " " + folder.unfinished.read_text().strip()
    if not studies:
        return
    from torch.utils.tensorboard import SummaryWriter

    targets = [(StudyFolder(out).report, [model]) for model, out in folders.items()]
    targets += [(Path(report), list(studies))] if report else []
    for target, models in targets:
        text, _ = study_markdown(
            {model: studies[model] for model in models},
            [commands[model] for model in models] + list(made_by),
            [grids[model] for model in models] + list(notes),
            conclusion,
        )
        write_text_atomically(target, text)
        for model in models:
            for name, question in REGISTRY.items():
                rows = [row for row in studies[model].rows if row["kind"] == name]
                for file_name, figure in question().figures(rows, model).items():
                    write_figure(figure, inside(target.parent, file_name), None)
    for model, out in folders.items():
        folder = StudyFolder(out)
        with contextlib.closing(SummaryWriter(str(folder.tensorboard))) as experiment:
            experiment.add_text("beta_study", folder.report.read_text())
            for path in sorted(
                folder.path("tables").glob("*/*.md")
            ):  # e.g. per_sample_w/<relation>__trial_<t>
                experiment.add_text(f"{path.parent.name}/{path.stem}", path.read_text())
            for name, question in REGISTRY.items():  # the figures, as images beside the text
                rows = [row for row in studies[model].rows if row["kind"] == name]
                for file_name, figure in question().figures(rows, model).items():
                    experiment.add_figure(f"{name}/{Path(file_name).stem}", figure)  # closes it
