"""``lre-pl cross-relation``: every relation's LRE applied to every other relation's subject states, over
one finished sweep folder (:mod:`lre_pl.experiments.cross_relation.matrix` defines what is measured).

Each bundle is read once: r's operator at its dev-chosen (layer, β) and the states of its evaluated
subjects at the layers some reader reads are kept, the rest let go. The LM is loaded for its final norm
and unembedding only (decoding); it runs no forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from lre_pl.dataset.relations import CATEGORIES
from lre_pl.errors import InputError
from lre_pl.evaluation.context import Decoder
from lre_pl.experiments.cross_relation.matrix import (
    Reader,
    Subjects,
    bias_only_row,
    cross_rows,
    shared_positions,
)
from lre_pl.experiments.cross_relation.report import FIGURES, CrossMatrices, heatmap, report_markdown
from lre_pl.experiments.sweep.finished import BundleKey, FinishedSweep
from lre_pl.files import (
    check_writable_folder,
    files_together,
    folder_lock,
    write_bytes_atomically,
    write_text_atomically,
)
from lre_pl.lightning.outputs import write_figure
from lre_pl.lm.models import check_model_spec
from lre_pl.protocol.folder import CrossRelationFolder, results_folder
from lre_pl.protocol.rows import read_rows, write_rows, write_rows_csv


@dataclass
class CrossRelationConfig:
    """Relation r's LRE applied to relation r′'s subject states, for every ordered pair of a finished sweep."""

    sweep_dir: str = ""
    """A finished ``lre-pl sweep`` folder (bundles, rows, sweep_config.json)."""
    relations: list[str] | None = None
    """Only these relations (names), or ``[<category>]`` for the sweep's evaluated relations of one
    category; ``None`` or ``[all]``: every relation the sweep evaluated. At least two."""
    trials: list[int] = field(default_factory=lambda: [0])
    """The trials (seeds) whose bundles are read: a pair is read within one trial, then averaged."""
    output_dir: str | None = None
    """Where rows, report and figures go; ``None``: ``<sweep_dir>/cross_relation``."""
    results_dir: str | None = None
    """Also copy the rows (``results.csv.gz``), report, figures and the sweep's config and commands to
    ``<results_dir>/<model>/`` (e.g. ``results/cross_relation``) for committing."""
    family_threshold: float = 0.5
    """Two relations are linked into a family when each one's LRE answers with its own kind of object,
    chosen by the subject's state and not by b alone, on the other's subjects at least this often (type
    share beyond b, both ways)."""

    def check(self) -> tuple[FinishedSweep, list[BundleKey], Path]:
        """The sweep, the bundles to read and the output folder; one-line errors before any model is loaded."""
        if not self.sweep_dir:
            raise InputError("no sweep_dir: give --sweep_dir DIR, the output_dir of a finished lre-pl sweep")
        if not 0 <= self.family_threshold <= 1:
            raise InputError(f"family_threshold={self.family_threshold} must be a share between 0 and 1")
        if not self.trials:
            raise InputError("trials is empty: give the sweep's trials (seeds) to read, e.g. [0]")
        sweep = FinishedSweep.read(self.sweep_dir)
        evaluated = {relation for relation, _ in sweep.points}
        relations = None if self.relations == ["all"] else self.relations
        if relations is not None and len(relations) == 1 and relations[0] in CATEGORIES:
            relations = [r for r in sorted(evaluated) if sweep.folder.relation(r).category == relations[0]]
        keys = sweep.keys(relations, self.trials)  # a relation the sweep did not evaluate: one line
        for trial in self.trials:
            found = sorted(relation for relation, seed in keys if seed == trial)
            if len(found) < 2:
                raise InputError(
                    f"trial {trial} of {self.sweep_dir} has {len(found)} evaluated relation(s) among "
                    f"relations={self.relations}: cross-relation application needs at least 2"
                )
        check_model_spec(sweep.model)
        out = Path(self.output_dir) if self.output_dir else sweep.folder.cross_relation
        check_writable_folder(out, "output_dir")
        if self.results_dir is not None:
            check_writable_folder(Path(self.results_dir), "results_dir")
        return sweep, keys, out


def cross_relation_rows(
    sweep: FinishedSweep, keys: list[BundleKey], tokenizer, decoder: Decoder
) -> tuple[list[dict], dict[tuple[str, str], list[str]]]:
    """Every row of every ordered pair of ``keys`` within a trial, and the shared subjects of each pair
    of the first trial ((r, r′) -> subjects). Each bundle is loaded once."""
    grid = sweep.sweep_config.grid()
    rows, examples = [], {}
    trials = sorted({trial for _, trial in keys})
    for trial in trials:
        at = [key for key in keys if key[1] == trial]
        layers = list(dict.fromkeys(sweep.points[key][0] for key in at))  # every layer a reader reads
        readers, subjects = [], []
        for relation, _ in tqdm(at, desc=f"cross-relation: bundles of trial {trial}", unit="bundle"):
            bundle = sweep.bundle(relation, trial)
            layer, beta = sweep.points[relation, trial]
            samples = sweep.folder.relation(relation).samples
            readers.append(Reader.of(bundle, layer, beta, tokenizer, samples))
            subjects.append(Subjects.of(bundle, grid.known_samples(bundle).indices, layers))
            del bundle
        for reader in tqdm(readers, desc=f"cross-relation: readouts of trial {trial}", unit="relation"):
            rows += [
                *cross_rows(reader, subjects, decoder, sweep.model),
                bias_only_row(reader, decoder, sweep.model),
            ]
            if trial == trials[0]:
                for other in subjects:
                    shared = shared_positions(reader, other)
                    if shared and other.relation != reader.relation:
                        examples[reader.relation, other.relation] = [other.subjects[i] for i in shared]
    return rows, examples


def write_cross_report(
    folder: CrossRelationFolder,
    rows: list[dict],
    examples: dict[tuple[str, str], list[str]],
    threshold: float,
    trials: list[int],
    made_by: list[str],
) -> CrossMatrices:
    """results.csv, the figures (PNG and TensorBoard) and the report of ``rows``."""
    from torch.utils.tensorboard import SummaryWriter

    write_rows_csv(folder.results, rows)
    matrices = CrossMatrices.of(rows)
    report = report_markdown(matrices, threshold, examples, trials, made_by)
    write_text_atomically(folder.report, report)
    experiment = SummaryWriter(str(folder.tensorboard))
    experiment.add_text("cross_relation", report)
    for metric, (stem, _, _) in FIGURES.items():
        write_figure(heatmap(matrices, metric), folder.figure(stem), experiment)
    experiment.close()
    return matrices


def copy_results(folder: CrossRelationFolder, model: str, results_dir: Path) -> Path:
    """The rows (gzipped), report, figures and the sweep's config and commands to ``results_dir/<model>/``
    (what a repository commits: no bundles)."""
    import gzip

    target = results_folder(results_dir, model)
    write_bytes_atomically(target / "results.csv.gz", gzip.compress(folder.results.read_bytes(), mtime=0))
    paths = [folder.report, folder.sweep_config, folder.sweep_commands]
    for path in [*paths, *(folder.figure(stem) for stem, _, _ in FIGURES.values())]:
        if path.exists():
            write_bytes_atomically(target / path.name, path.read_bytes())
    return target


def run_cross_relation(config: CrossRelationConfig, command: str | None = None) -> Path:
    """The rows, report and figures of every ordered pair; returns the output folder. The folder is
    locked while it runs (a second run into it is refused at once), and its files appear together at
    the end (:func:`~lre_pl.files.files_together`): a run stopped or failed on the way leaves none."""
    sweep, keys, out = config.check()
    with folder_lock(out, "cross-relation"):
        lm = sweep.load_model()
        rows, examples = cross_relation_rows(sweep, keys, lm.tokenizer, Decoder(lm, top_k=1))
        with files_together(out) as staged:
            folder = CrossRelationFolder(staged)
            folder.copy_from(sweep.folder)
            write_rows(folder.rows, rows)
            made_by = [f"`{command}`"] if command else []
            write_cross_report(
                folder, read_rows([folder.rows]), examples, config.family_threshold, config.trials, made_by
            )
        if config.results_dir is not None:
            copy_results(CrossRelationFolder(out), sweep.model, Path(config.results_dir))
    return out
