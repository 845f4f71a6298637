"""The β study: why the LRE needs its Jacobian scaled by β > 1, as evaluation variants on bundles.

Every question is answered from the protocol's bundles (:mod:`lre_pl.lre.bundle`), at the layer the
protocol chose for the LRE on each relation's dev split, with the protocol's known samples and
dev/test split (:class:`~lre_pl.experiments.beta_study.context.StudyContext`): no new Jacobian pass,
except that a few questions recompute each training sample's J_i at that one layer. Each question is
a class of :mod:`lre_pl.experiments.beta_study.questions` (see each for its definition) and writes
tidy rows (:data:`~lre_pl.protocol.rows.ROW_FIELDS`; ``estimator`` names the variant). Where the study
needs the LM (the corner's unembedding rows, decoding) it takes the loaded model.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from lre_pl.errors import InputError
from lre_pl.evaluation.context import Decoder
from lre_pl.experiments.beta_study.context import StudySettings, SweepStudy
from lre_pl.experiments.beta_study.questions import QUESTIONS, REGISTRY, STUDY
from lre_pl.experiments.sweep.finished import FinishedSweep, nothing_evaluated
from lre_pl.files import (
    check_writable_file,
    check_writable_folder,
    folder_lock,
    write_bytes_atomically,
    write_text_atomically,
)
from lre_pl.lm.models import check_model_spec
from lre_pl.protocol.folder import StudyFolder, SweepFolder, read_json, results_folder
from lre_pl.protocol.rows import read_rows, rows_complete, write_rows

Layer = int | str


@dataclass
class BetaStudyConfig:
    """The β study over finished ``lre-pl sweep`` folders; rerunning the same config resumes it."""

    sweep_dirs: list[str] = field(
        default_factory=lambda: [
            "lightning_logs/sweep_beta_smollm2-135m",
            "lightning_logs/sweep_gemma3-270m-full",
        ]
    )
    """Sweep folders (bundles, rows, sweep_config.json), one per model: each is studied with its own
    model, grid and splits, and the report sets them side by side."""
    questions: list[str] = field(default_factory=lambda: list(STUDY))
    """Which questions to answer, by name, e.g. ``[residual, global_beta]`` (default: the β study's ten, in
    the registry's order; ``configs/beta/explain.yaml`` asks the explanations of β; an unknown name is
    refused with the list)."""
    output_dir: str | None = None
    """Where the study's rows and report go: ``None``: ``<sweep_dir>/beta_study`` for each sweep, shared
    by every question's config; a folder: ``<output_dir>/<sweep folder name>``."""
    report: str | None = None
    """Also write the markdown report of all the sweeps here (e.g. ``docs/beta_study.md``), figures beside it."""
    max_known: int | None = 50
    """At most this many known samples per bundle: a seeded subset of the sweep's own dev and test
    splits, in proportion (no study test sample chose the sweep's layer and β); ``None``: the sweep's.
    Each decode of Gemma 3 is a [d] x [d, 262k] product: 50 keeps its study within a CPU's reach."""
    fit_epochs: int = 10
    """Epochs of each learned-β fit (``global_beta``); β moves around its optimum after ~5."""
    quadrature_nodes: int = 8
    """Gauss–Legendre nodes on each chord between two training subjects (``secant``: W_chord is the mean
    Jacobian over them; the profile's own check of the quadrature says whether they suffice)."""
    shots: list[int] = field(default_factory=lambda: [1, 2, 5, 8])
    """The numbers of in-context examples compared by ``in_context`` (each costs one layer's Jacobians)."""
    relations: list[str] | None = None
    """Study only these relations of each sweep (names, or one category such as ``[factual]``), e.g. a
    subset chosen before any result for the questions that compute new Jacobians; ``None``: every
    evaluated relation. Rows of a bundle do not depend on it: a later run over more relations adds rows
    and keeps these. Those a sweep did not evaluate are left out, with a warning line, and named in the
    report; a sweep that evaluated none of them is refused before any model loads."""
    costly_relations: list[str] | None = None
    """The relations on which the costly questions (those that compute new Jacobians or products: the
    chord, the held-fixed, the multi-token and the in-context ones) are asked, e.g. a subset chosen
    before any result when the CPU allows no more; the other questions cover every studied relation.
    ``None``: every studied relation. Checked against each sweep as ``relations`` is, where a costly
    question is asked."""
    conclusion: str | None = None
    """A markdown file whose text closes the report of hypotheses (the conclusion written in plain words
    from the verdicts above it), e.g. ``docs/explaining_beta_conclusion.md``; ``None``: none."""
    results_dir: str | None = None
    """Also copy each model's rows (``results.csv.gz``), its report, figures and the sweep's commands
    and config to ``<results_dir>/<model>/`` (e.g. ``results/explaining_beta``) for committing."""
    allow_unfinished: bool = False
    """Study a sweep whose config still lists (relation, trial) pairs without rows, on what it has
    (the console and the report name what is missing). ``False``: such a sweep is refused, so that a
    report never covers a subset of its sweep unnoticed."""

    def check(self) -> list[tuple[FinishedSweep, Path]]:
        """Each sweep (read once) and its study folder; one-line errors before any model is loaded and
        before anything is written."""
        unknown = sorted(set(self.questions) - set(QUESTIONS))
        if unknown or not self.questions:
            raise InputError(f"questions={self.questions}: choose from {list(QUESTIONS)}")
        if self.max_known is not None and self.max_known < 2:
            raise InputError(
                f"max_known={self.max_known} must be at least 2 (one dev and one test sample), or null"
            )
        if self.fit_epochs < 1:
            raise InputError(f"fit_epochs={self.fit_epochs} must be at least 1")
        if self.quadrature_nodes < 1:
            raise InputError(f"quadrature_nodes={self.quadrature_nodes} must be at least 1, e.g. 8")
        if not self.shots or any(not isinstance(n, int) or n < 0 for n in self.shots):
            raise InputError(
                f"shots={self.shots} must be non-negative numbers of examples, e.g. [1, 2, 5, 8]"
            )
        if self.conclusion is not None and not Path(self.conclusion).is_file():
            raise InputError(f"conclusion={self.conclusion!r} is not a file: give a markdown file or null")
        if not self.sweep_dirs:
            raise InputError("sweep_dirs is empty: give the folders of finished lre-pl sweep runs")
        from lre_pl.experiments.sweep.runner import unfinished_pairs

        models, sweeps = {}, {}
        for sweep_dir in self.sweep_dirs:
            sweeps[sweep_dir] = SweepFolder(Path(sweep_dir)).read_config()
            if sweeps[sweep_dir] is None:
                raise InputError(
                    f"sweep_dir {sweep_dir!r} holds no sweep_config.json: run lre-pl sweep into it first"
                )
            model = sweeps[sweep_dir]["model"]
            if model in models:
                raise InputError(
                    f"sweep_dirs {models[model]!r} and {sweep_dir!r} are both of {model}: study one folder per model"
                )
            models[model] = sweep_dir
        for sweep_dir, sweep in sweeps.items():
            root = Path(sweep_dir)
            missing = unfinished_pairs(root, sweep)
            if missing and not self.allow_unfinished:
                if not any(rows_complete(path) for path in SweepFolder(root).row_files()):
                    raise nothing_evaluated(root)
                raise InputError(
                    f"{unfinished_line(root, missing, sweep)}: rerun its sweep to finish it, or give "
                    "allow_unfinished true to study what it has"
                )
        finished = [FinishedSweep.read(sweep_dir) for sweep_dir in self.sweep_dirs]
        costly = any(REGISTRY[name].costly for name in self.questions)
        for sweep in finished:
            if self.relations is not None:
                sweep.studied_relations(self.relations, "relations")
            if self.costly_relations is not None and costly:
                sweep.studied_relations(self.costly_relations, "costly_relations")
            elif self.costly_relations is not None:  # asked of no question: only an unknown name is refused
                sweep.split_relations(self.costly_relations)
            check_model_spec(sweep.model)
        roots = [Path(sweep_dir) for sweep_dir in self.sweep_dirs]
        if self.output_dir is None:
            folders = {root: SweepFolder(root).beta_study for root in roots}
        elif len({root.resolve().name for root in roots}) < len(roots):
            raise InputError(f"sweep_dirs={self.sweep_dirs} share a folder name: give output_dir null")
        else:
            folders = {root: Path(self.output_dir) / root.resolve().name for root in roots}
        settings = self.settings.as_json()
        defaults = StudySettings().as_json()  # a setting a folder predates was made at its default
        for out in folders.values():  # rows made with other settings would mix in silently
            path = StudyFolder(out).settings
            before = defaults | (
                read_json(path, f"delete {out} to study again from the start") if path.exists() else settings
            )
            changed = [name for name in settings if before[name] != settings[name]]
            if changed:
                raise InputError(
                    f"{out} was studied with {changed[0]}={before[changed[0]]}, not {settings[changed[0]]}: "
                    "rerun with its settings or give another output_dir"
                )
            check_writable_folder(out, "output_dir")
        if self.report:
            check_writable_file(self.report, "report")
        if self.results_dir is not None:
            check_writable_folder(Path(self.results_dir), "results_dir")
        return [(sweep, folders[root]) for sweep, root in zip(finished, roots)]

    @property
    def settings(self) -> StudySettings:
        """What the rows depend on besides the sweep: kept beside them (``study_settings.json``)."""
        return StudySettings(self.max_known, self.fit_epochs, self.quadrature_nodes, tuple(self.shots))


def unfinished_line(root: Path, missing: Sequence[tuple[str, int]], sweep: dict) -> str:
    """What an unfinished sweep lacks, in one line: the (relation, trial) pairs its config (``sweep``,
    as in its ``sweep_config.json``) lists that have no rows yet."""
    from lre_pl.experiments.sweep.runner import resolve_relations

    total = len(resolve_relations(sweep["relations"])) * len(sweep["trials"])
    named = ", ".join(f"{relation} trial {trial}" for relation, trial in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return f"the sweep in {root} is unfinished: {len(missing)} of its {total} (relation, trial) pairs have no rows ({named}{more})"


def run_beta_study(config: BetaStudyConfig, command: str | None = None) -> list[Path]:
    """Every sweep's study (:func:`study_sweep`), then the report over all of them; returns the study
    folders. ``command`` (the study's command line) is written into the report. Each study folder is
    locked while it runs (a second study into one is refused at once)."""
    from lre_pl.experiments.beta_study.report import write_study_report
    from lre_pl.experiments.sweep.runner import relation_names

    studies = config.check()
    folders = [out for _, out in studies]
    with contextlib.ExitStack() as locks:
        for out in folders:
            locks.enter_context(folder_lock(out, "beta-study"))
        for sweep, out in studies:
            study_sweep(sweep, out, config)
        made_by = [f"the study: `{command}`" if command else f"the study: questions {config.questions}"]
        conclusion = Path(config.conclusion).read_text(encoding="utf-8") if config.conclusion else None
        costly = [name for name in config.questions if REGISTRY[name].costly]
        notes = (
            [f"The costly questions ({', '.join(costly)}) on {', '.join(config.costly_relations)} only "
             "(`costly_relations`); the others on every studied relation."]
            if costly and config.costly_relations is not None else []
        )  # fmt: skip
        asked = {
            "relations": config.relations,
            "costly_relations": config.costly_relations if costly else None,
        }
        notes += [
            f"Left out of `{option}` on {sweep.model}, with no evaluated bundle in its sweep: "
            f"{', '.join(lacking)}."
            for option, requested in asked.items() if requested is not None
            for sweep, _ in studies if (lacking := sweep.split_relations(requested)[1])
        ]  # fmt: skip
        chosen = None if config.relations is None else relation_names(config.relations)
        write_study_report(folders, config.report, made_by, conclusion, notes, chosen)
        if config.results_dir is not None:
            for out in folders:
                copy_results(out, Path(config.results_dir))
    return folders


def copy_results(out: Path, results_dir: Path) -> Path | None:
    """A study folder's tidy rows (gzipped), its report and figures, and the sweep's commands, config
    and the study's settings, to ``results_dir/<model>/`` (what a repository commits: no bundles)."""
    import gzip

    folder = StudyFolder(out)
    table = folder.results
    if not table.exists():  # no rows: nothing studied
        return None
    model = read_json(folder.sweep_config, "rerun lre-pl beta-study")["model"]
    target = results_folder(results_dir, model)
    target.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(target / "results.csv.gz", gzip.compress(table.read_bytes(), mtime=0))
    for path in [folder.report, folder.sweep_commands, folder.sweep_config, folder.settings,
                 *sorted(out.glob("*.png"))]:  # fmt: skip
        if path.exists():
            write_bytes_atomically(target / path.name, path.read_bytes())
    return target


def study_sweep(finished: FinishedSweep, out: Path, config: BetaStudyConfig) -> None:
    """Rows of the config's questions for every evaluated bundle of the ``finished`` sweep, into ``out/rows``.

    Per bundle, a question's row file is skipped when it exists; the cross-bundle questions are redone
    when the sweep's evaluated bundles are no longer the ones their rows cover. The sweep's commands
    and config are copied beside the rows (``sweep_command.txt``, ``sweep_config.json``) for the report,
    and so is what an unfinished sweep lacks (``sweep_unfinished.txt``, studied with ``allow_unfinished``).
    """
    from lre_pl.experiments.sweep.runner import unfinished_pairs, warn

    folder, sweep_folder, swept, points = StudyFolder(out), finished.folder, finished.config, finished.points
    root, sweep = sweep_folder.root, finished.sweep_config
    grid = sweep.grid()
    if config.relations is not None:
        studied = finished.split_relations(config.relations)[0]
        points = {key: point for key, point in points.items() if key[0] in studied}
    costly = None if config.costly_relations is None else finished.split_relations(config.costly_relations)[0]
    lm = finished.load_model()  # before anything is written: a model that fails to load leaves nothing
    missing = unfinished_pairs(root, swept)
    unfinished = folder.unfinished
    if missing:
        line = unfinished_line(root, missing, swept)
        warn(f"{line}; studied without them (allow_unfinished)")
        write_text_atomically(unfinished, f"**Unfinished sweep**: {line}; studied without them.\n")
    else:
        unfinished.unlink(missing_ok=True)
    folder.copy_from(sweep_folder)
    write_text_atomically(folder.settings, json.dumps(config.settings.as_json()) + "\n")
    study = SweepStudy(
        sweep_folder, grid, Decoder(lm, grid.top_k), points, sweep.model, folder.tensorboard, config.settings
    )
    questions = [REGISTRY[name]() for name in config.questions]
    # One row file per question and bundle: each resumes on its own when the questions change.
    asked = [question for question in questions if not question.across_bundles]
    bar = tqdm(study.keys, desc=f"beta study ({sweep.model})", unit="trial")
    for relation, trial in bar:
        missing = [
            q for q in asked
            if not rows_complete(folder.rows(q.name, relation, trial))
            and (not q.costly or costly is None or relation in costly)
        ]  # fmt: skip
        if not missing:
            continue
        bar.set_postfix_str(f"{relation}, trial {trial}")
        context = study.context(relation, trial)
        for question in missing:
            if len(context) < grid.min_known:  # too few known samples: an empty answer, done
                write_rows(folder.rows(question.name, relation, trial), [])
                continue
            answer = question.answer(context)
            if answer.table is not None:  # the table first: a row file marks its question done
                write_text_atomically(folder.table(question.name, relation, trial), answer.table)
            write_rows(folder.rows(question.name, relation, trial), answer.rows)
    bar.close()
    for question in (question for question in questions if question.across_bundles):
        path = folder.rows(question.name)
        if not rows_complete(path) or not question.covers(read_rows([path]), study):
            write_rows(path, question.rows(study))
