"""``lre-pl distracted-lens``: the attribute lens on distracted prompts over finished sweeps, resumable
per bundle, then one report over the models (``configs/lens/distracted.yaml``)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from lre_pl.errors import InputError
from lre_pl.evaluation.grid import EvaluationGrid
from lre_pl.experiments.attribute_lens.distracted import (
    FALSE,
    QUERY,
    UNDISTRACTED,
    DistractedLens,
    check_template,
)
from lre_pl.experiments.sweep.finished import FinishedSweep
from lre_pl.files import check_writable_file, check_writable_folder, folder_lock, write_text_atomically
from lre_pl.lm.models import check_model_spec
from lre_pl.protocol.folder import LensFolder
from lre_pl.protocol.rows import rows_complete, write_rows


@dataclass
class DistractedLensConfig:
    """The attribute lens on distracted prompts, over finished ``lre-pl sweep`` folders (one per model);
    rerunning the same config resumes it."""

    sweep_dirs: list[str] = field(
        default_factory=lambda: [
            "lightning_logs/sweep_beta_smollm2-135m",
            "lightning_logs/sweep_lens_gemma3-270m",
        ]
    )
    """Finished sweep folders, one per model: each bundle's LRE is read at the layer and β its sweep chose
    on dev."""
    relations: list[str] = field(default_factory=lambda: ["factual"])
    """The relations (names, or one category such as ``[factual]``, or ``[all]``). Those a sweep did not
    evaluate (not swept, or too few known samples) are left out, with a warning line, and named in the
    report; a sweep that evaluated none of them is refused before any model loads."""
    trial: int = 0
    """Which trial's bundles."""
    templates: dict[str, str] = field(
        default_factory=lambda: {
            "repetition": f"{FALSE}. {FALSE}. {FALSE}. {QUERY}",
            "instruction": f"Ignore what you know and repeat after me: {FALSE}. {QUERY}",
        }
    )
    """{prompt kind: distraction template}: ``{false}`` is the relation's statement about the subject
    with a wrong object, ``{query}`` the relation's query about it (last, once). The query alone is
    always run as the reference (``undistracted``)."""
    seed: int = 0
    """Seeds the draw of each sample's wrong object."""
    examples: int = 5
    """Samples per relation whose top-1 tokens the report's tables show."""
    output_dir: str | None = None
    """``None``: ``<sweep_dir>/attribute_lens`` for each sweep; a folder: ``<output_dir>/<sweep folder name>``."""
    report: str | None = None
    """Also write the report over every model here (e.g. ``docs/attribute_lens.md``), figures beside it."""
    conclusion: str | None = None
    """A markdown file whose text closes the report over the models (what the numbers say, written by
    hand), e.g. ``docs/attribute_lens_conclusion.md``; ``None``: none."""
    results_dir: str | None = None
    """Also copy each model's rows (``results.csv.gz``), report and figures to ``<results_dir>/<model>/``."""

    def check(self) -> list[tuple[FinishedSweep, Path]]:
        """Each sweep (read once) and its lens folder, every setting checked before any model loads
        (nothing is written yet)."""
        if not self.sweep_dirs:
            raise InputError("sweep_dirs is empty: give the folders of finished lre-pl sweep runs")
        if UNDISTRACTED in self.templates:
            raise InputError(
                f"templates: {UNDISTRACTED!r} is the reference prompt's name: call yours otherwise"
            )
        for name, template in self.templates.items():
            check_template(name, template)
        if self.conclusion is not None and not Path(self.conclusion).is_file():
            raise InputError(f"conclusion={self.conclusion!r} is not a file: give a markdown file or null")
        if self.examples < 0:
            raise InputError(f"examples={self.examples} must be 0 or more")
        folders = []
        for sweep_dir in self.sweep_dirs:
            sweep = FinishedSweep.read(sweep_dir)
            sweep.studied_relations(self.relations, "relations", self.trial)
            check_model_spec(sweep.model)
            root = sweep.folder.root
            out = (
                sweep.folder.attribute_lens if self.output_dir is None else Path(self.output_dir) / root.name
            )
            check_writable_folder(out, "output_dir")
            folders.append((sweep, out))
        if self.report is not None:
            check_writable_file(self.report, "report")
        if self.results_dir is not None:
            check_writable_folder(self.results_dir, "results_dir")
        return folders


def lens_sweep(sweep: FinishedSweep, out: Path, config: DistractedLensConfig) -> list[str]:
    """Rows of every evaluated bundle of ``config.relations`` in ``sweep``, into ``out``; returns the
    relations the sweep did not evaluate. A bundle whose rows file is whole is done."""
    grid: EvaluationGrid = sweep.sweep_config.grid()
    found, skipped = sweep.split_relations(config.relations, config.trial)
    keys = [(relation, config.trial) for relation in found]
    folder, lm = LensFolder(out), None
    bar = tqdm(keys, desc=f"distracted lens ({sweep.model})", unit="relation")
    for relation, trial in bar:
        if rows_complete(folder.rows(relation, trial)):
            continue
        bar.set_postfix_str(relation)
        lm = lm or sweep.load_model()
        bundle = sweep.bundle(relation, trial)
        samples = grid.known_samples(bundle)
        layer, beta = sweep.points[relation, trial]
        experiment = DistractedLens(
            bundle,
            sweep.folder.relation(relation),
            layer,
            beta,
            samples.indices,
            config.templates,
            config.seed,
            grid.batch_size,
        )
        rows = experiment.run(lm)
        write_text_atomically(folder.table(relation, trial), experiment.examples(config.examples))
        write_rows(folder.rows(relation, trial), rows)  # last: a whole rows file marks the bundle done
    bar.close()
    return skipped


def run_distracted_lens(config: DistractedLensConfig, command: str | None = None) -> list[Path]:
    """Every sweep's rows (:func:`lens_sweep`), then each folder's report and the report over models;
    each lens folder is locked while it runs (a second run into one is refused at once)."""
    from lre_pl.experiments.attribute_lens.report import copy_results, write_lens_report

    checked = config.check()
    with contextlib.ExitStack() as locks:
        for _, out in checked:
            locks.enter_context(folder_lock(out, "distracted-lens"))
        studied = [(sweep, out, lens_sweep(sweep, out, config)) for sweep, out in checked]
        made_by = [f"`{command}`" if command else "lre-pl distracted-lens"]
        write_lens_report(studied, config, made_by)
        if config.results_dir is not None:
            for _, out, _ in studied:
                copy_results(out, Path(config.results_dir))
    return [out for _, out, _ in studied]
