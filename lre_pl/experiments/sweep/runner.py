"""``lre-pl sweep``: the paper's protocol over many relations and trials, resumable.

Two stages per (relation, trial), each skipped when its file exists and is whole:

1. **Estimation** (expensive): one Lightning ``fit`` of :class:`~lre_pl.lightning.module.LinearRelationModule`
   at every layer, writing a bundle (``bundles/<relation>/trial_<seed>.pt``).
2. **Evaluation** (the grid and causality: expensive on a GPU too): :class:`~lre_pl.evaluation.grid.BundleEvaluation`
   of the bundle, written atomically to ``rows/<relation>__trial_<seed>.jsonl``.

Several processes (``trainer: {strategy: ddp, devices: N, num_nodes: M}``, or torchrun / srun) share
the work in one of two ways, ``spread``:

- ``tasks`` (the default): each process takes whole (relation, trial) tasks, largest relation first,
  until none is left: its estimation in a one-device fit on its own device, then its evaluation there.
  A task is taken by creating its claim file exclusively (``claims/<relation>__trial_<seed>``), so no
  two processes do one task and none idles while a task is left; the last ones end within about one
  task of each other. The processes are started and found by :mod:`lre_pl.lightning.processes`
  (several nodes need a shared file system: the claims are files).
- ``prompts``: one DDP fit per task over all processes, the training and test prompts sharded across the
  ranks and reduced, as in ``lre-pl fit``; evaluation on global rank 0 while the others wait. With
  n_train = 5 prompts, more than 5 processes idle in the Jacobians, and every stage waits for its
  slowest rank.

Both write the bundles and rows of one process. A file under its final name is complete (written to a
partial file, then renamed), so Ctrl-C, a crash or a full disk loses at most the tasks in progress, and
a rerun of the same command resumes.
A rerun also repairs (:meth:`Sweep.repair`): a rows file without its footer (cut short) is evaluated
again, a bundle that is missing or damaged is estimated again, and the claims of a dead run are
dropped. A rerun may add relations or trials to a folder, or change how it runs (``spread``, the
trainer, ``threads``), never its grid (:meth:`Sweep.check_folder`). Every setting is checked before
anything is written, and one sweep at a time works in a folder (a lock, held by global rank 0; a
second one is refused in one line). At the end the sweep folder gets ``results.csv`` (every row of the
folder), ``summary.md`` (by category, like the paper's tables) and figures (PNG and TensorBoard), made
from the row files alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from tqdm.auto import tqdm

from lre_pl.dataset.relations import CATEGORIES, Relation, list_relations, load_relation
from lre_pl.errors import InputError
from lre_pl.evaluation.causality import EDIT_TARGETS
from lre_pl.evaluation.context import Decoder
from lre_pl.evaluation.grid import BundleEvaluation, EvaluationGrid
from lre_pl.files import (
    check_writable_folder,
    create_exclusively,
    folder_lock,
    write_bytes_atomically,
    write_text_atomically,
    zip_damage,
)
from lre_pl.lightning.datamodule import RelationDataModule, check_trial
from lre_pl.lightning.module import LinearRelationModule
from lre_pl.lightning.processes import Place, Processes, find_place
from lre_pl.lm.models import check_dtype, check_model_spec, load_language_model, parse_layer
from lre_pl.lre.bundle import Bundle
from lre_pl.lre.estimators import ESTIMATORS, estimator_named
from lre_pl.protocol.folder import SweepFolder
from lre_pl.protocol.rows import rows_complete, write_rows

#: The paper's beta grid: 0 to 5 in steps of 0.25.
PAPER_BETAS = [round(0.25 * i, 2) for i in range(21)]
#: The seeds numpy (and so ``seed_everything``) accepts.
MAX_SEED = 2**32 - 1
#: Settings a rerun into an existing sweep folder may change: which work it does, and how fast.
RESUMABLE_FIELDS = (
    "relations", "trials", "batch_size", "chunk_size", "output_dir", "trainer", "spread", "threads",
    "stop_after_hours",
)  # fmt: skip
#: The ways several processes share a sweep (see the module's docstring).
SPREADS = ("tasks", "prompts")


@dataclass
class SweepConfig:
    """Everything one sweep runs; rerunning the same config resumes it."""

    model: str = "smollm2-135m"
    """Model spec, as in ``lre-pl fit``."""
    dtype: str = "float32"
    """Torch dtype of the model weights."""
    relations: list[str] = field(default_factory=lambda: ["all"])
    """``[all]``, a category (``[factual]``), or relation names / JSON files."""
    trials: list[int] = field(default_factory=lambda: [0])
    """One trial per seed: the seed of the train/test split and of the dev/test and target draws."""
    n_train: int = 5
    """Training samples per trial (the few-shot examples of every prompt)."""
    layers: str | list[int | str] = "all"
    """Layers estimated and scanned: ``all`` or a list such as ``[emb, 4, 8, 12]``."""
    betas: list[float] = field(default_factory=lambda: list(PAPER_BETAS))
    """beta grid of the LRE, scanned at the chosen layer (the paper: 0 to 5 in steps of 0.25)."""
    layer_search_beta: float = 1.0
    """beta at which the layer is chosen (1: the unscaled Jacobian)."""
    ranks: list[int] = field(default_factory=lambda: [8, 32, 128])
    """Ranks of the causality edit W⁺_r; each at most the model's d. ``[]``: no rank sweep."""
    comparison_edits: bool = True
    """Also the paper's comparison edits (s replaced by s', by the subject's embedding, by o')."""
    estimators: list[str] = field(default_factory=lambda: list(ESTIMATORS))
    """Estimators evaluated on every bundle (``lre`` first; baselines from the same statistics)."""
    dev_fraction: float = 0.5
    """Share of each relation's known test samples that choose hyper-parameters (the rest reports)."""
    min_known: int = 4
    """Relations with fewer known test samples are listed as such and not evaluated (>= 2)."""
    max_known: int | None = None
    """Evaluate at most this many known samples of a relation (a seeded subset); ``None``: all."""
    known_only: bool = True
    """Evaluate on the known test samples only (the paper); ``False`` takes every test sample."""
    top_k: int = 3
    """faithfulness@1 and @top_k."""
    batch_size: int = 8
    """Prompts per batch of the Jacobian passes and the edits (the knowns filter runs 32 at a time)."""
    chunk_size: int | None = None
    """Vector-Jacobian products per backward pass (``None``: automatic)."""
    keep_jacobians: bool = False
    """Keep every per-sample J_i in the bundles (d² floats per sample and layer)."""
    output_dir: str = "lightning_logs/sweep"
    """The sweep folder: bundles, rows, results, summary, figures. Rerun to resume."""
    trainer: dict = field(default_factory=dict)
    """Extra ``pl.Trainer`` arguments for estimation, e.g. ``{strategy: ddp, devices: 2}``: ``devices`` x
    ``num_nodes`` processes (or those torchrun / srun started), which share the work as ``spread`` says."""
    spread: str = "tasks"
    """How several processes share the work: ``tasks``: each takes whole (relation, trial) tasks (its
    estimation in a one-device fit on its own device, then its evaluation); ``prompts``: one DDP fit per
    task, its prompts sharded across the processes, evaluation on global rank 0. One process: the same."""
    edit_targets: str = "known"
    """Where the causality edits' targets come from: ``known`` (the paper: among the evaluated known
    samples) or ``relation`` (every test sample of the relation, known or not; wider than the paper, its
    rows' metric is ``efficacy_relation_targets``): a relation whose known samples share one object
    has no target under ``known``."""
    stop_after_hours: float | None = None
    """Take no new task after this many hours and write the report of what is done (its coverage names
    what is left); rerun to resume. ``None``: run to the end. For one process or ``spread: tasks``."""
    threads: int | None = None
    """CPU threads of each process (``torch.set_num_threads``); ``None``: torch's default for one process,
    the node's cores shared among its processes for several."""

    def check(self) -> list[str]:
        """One-line errors for what needs no model; returns the relation names."""
        check_model_spec(self.model)
        check_dtype(self.dtype)
        if self.spread not in SPREADS:
            raise InputError(
                f"spread={self.spread!r}: give tasks (whole tasks per process) or prompts (one DDP fit)"
            )
        if self.edit_targets not in EDIT_TARGETS:
            raise InputError(
                f"edit_targets={self.edit_targets!r}: give known (the paper's targets) or relation (every "
                "test sample of the relation)"
            )
        if self.stop_after_hours is not None and self.stop_after_hours <= 0:
            raise InputError(f"stop_after_hours={self.stop_after_hours} must be positive (or null: no limit)")
        if self.threads is not None and self.threads < 1:
            raise InputError(
                f"threads={self.threads} must be at least 1 (or null: the cores shared among processes)"
            )
        if isinstance(self.layers, str):
            if self.layers != "all":
                raise InputError(f"layers={self.layers!r}: give all, or a list such as [emb, 4, 8]")
        elif not self.layers:
            raise InputError("layers is empty: give all, or a list such as [emb, 4, 8]")
        else:
            self.layers = [parse_layer(layer) for layer in self.layers]
        if not self.trials or len(set(self.trials)) != len(self.trials):
            raise InputError(f"trials={self.trials} must be distinct seeds, e.g. [0, 1, 2]")
        if any(not 0 <= seed <= MAX_SEED for seed in self.trials):
            raise InputError(
                f"trials={self.trials}: every seed must be between 0 and {MAX_SEED}, e.g. [0, 1, 2]"
            )
        if not self.betas or any(beta < 0 for beta in self.betas):
            raise InputError(f"betas={self.betas} must be a non-empty list of non-negative numbers")
        if self.layer_search_beta < 0:
            raise InputError(
                f"layer_search_beta={self.layer_search_beta} must be non-negative, like every beta"
            )
        if any(not isinstance(rank, int) or rank < 0 for rank in self.ranks):
            raise InputError(f"ranks={self.ranks} must be non-negative integers, e.g. [8, 32, 128]")
        if not 0 < self.dev_fraction < 1:
            raise InputError(f"dev_fraction={self.dev_fraction} must be between 0 and 1 (exclusive)")
        if self.max_known is not None and self.max_known < self.min_known:
            raise InputError(f"max_known={self.max_known} must be at least min_known={self.min_known}")
        if self.min_known < 2:
            raise InputError(f"min_known={self.min_known} must be at least 2 (one dev and one test sample)")
        for name, value in (
            ("top_k", self.top_k),
            ("batch_size", self.batch_size),
            ("n_train", self.n_train),
        ):
            if value < 1:
                raise InputError(f"{name}={value} must be at least 1")
        estimators = [estimator_named(name) for name in self.estimators]
        if not any(e.takes_beta for e in estimators):
            raise InputError(f"estimators={self.estimators} must include lre (the LRE itself)")
        relations = resolve_relations(self.relations)
        for name in relations:  # each relation's size (a few ms each), not only the first one set up
            check_trial(load_relation(name), self.n_train)
        return relations

    def grid(self) -> EvaluationGrid:
        return EvaluationGrid(
            estimators=[estimator_named(name) for name in self.estimators],
            betas=self.betas,
            layer_search_beta=self.layer_search_beta,
            ranks=self.ranks,
            comparison_edits=self.comparison_edits,
            dev_fraction=self.dev_fraction,
            min_known=self.min_known,
            max_known=self.max_known,
            known_only=self.known_only,
            top_k=self.top_k,
            batch_size=self.batch_size,
            edit_targets=self.edit_targets,
        )


def resolve_relations(requested: list[str]) -> list[str]:
    """Relation names (or JSON paths) of ``[all]``, ``[<category>]`` or a list; one-line errors."""
    if not requested:
        raise InputError("relations is empty: give [all], a category such as [factual], or names")
    if requested == ["all"]:
        return [name for name, _, _ in list_relations()]
    if len(requested) == 1 and requested[0] in CATEGORIES:
        return [name for name, _, _ in list_relations(requested[0])]
    for name in requested:
        load_relation(name)  # an unknown name or a bad file fails here, before any model
    return list(requested)


def relation_names(relations: list[str]) -> list[str]:
    """The names the rows carry (a JSON file's own name) of ``relations`` as a config gives them
    (:func:`resolve_relations`), in its order."""
    return list(named_relations(resolve_relations(relations)))


def listed_tasks(relations: list[str], trials: list[int]) -> list[tuple[str, int]]:
    """The (relation, trial) tasks a sweep config lists, relations by name in the config's order: what
    a report names when the folder lacks it."""
    return [(name, trial) for name in relation_names(relations) for trial in trials]


def unfinished_pairs(root: Path, config: dict) -> list[tuple[str, int]]:
    """The (relation, trial) pairs that the sweep config of the folder ``root`` (as written in its
    ``sweep_config.json``) asks for and that have no whole rows file yet: what a rerun would still do."""
    folder = SweepFolder(root)
    return [
        task
        for task in listed_tasks(config["relations"], config["trials"])
        if not rows_complete(folder.rows(*task))
    ]


def named_relations(requested: list[str]) -> dict[str, str]:
    """{relation name: the relation as given (a name, a file stem or a JSON file)}: a sweep names its
    files, and the commands after it their relations, by the name; two relations of one name are one line."""
    names: dict[str, str] = {}
    for given in requested:
        name = load_relation(given).name
        if name in names:
            raise InputError(
                f"relations {names[name]!r} and {given!r} are both named {name!r}: give one of them, or rename one"
            )
        names[name] = given
    return names


def same_relation(first: Relation, second: Relation) -> bool:
    """Whether two relations are one but for the file each was read from."""
    return replace(first, source="") == replace(second, source="")


def largest_first(tasks: list[tuple[str, int]], given: dict[str, str]) -> list[tuple[str, int]]:
    """``tasks`` by the size of their relation (its samples; ``given``: {name: as given}), largest first,
    else in their order: the longest first shortens the tail of a list schedule (no process is left
    alone with a large one)."""
    sizes = {relation: len(load_relation(given[relation]).samples) for relation, _ in tasks}
    return sorted(tasks, key=lambda task: -sizes[task[0]])


@dataclass(frozen=True)
class Deadline:
    """When a sweep stops taking new tasks (``stop_after_hours`` after it started); never for ``None``."""

    at: float | None = None
    """``time.monotonic()`` seconds."""

    @classmethod
    def after(cls, hours: float | None) -> Deadline:
        return cls(None if hours is None else time.monotonic() + 3600 * hours)

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at


def claimed_tasks(
    folder: SweepFolder, tasks: list[tuple[str, int]], rank: int, deadline: Deadline = Deadline()
) -> Iterator[tuple[str, int]]:
    """The tasks, in order, that this process takes, each claimed when the caller asks for the next one:
    those not done (their rows and bundle exist) whose claim file this process creates first; none
    once ``deadline`` has passed."""
    for relation, seed in tasks:
        if folder.done(relation, seed):
            continue
        if deadline.passed():
            return
        if create_exclusively(folder.claim(relation, seed), f"rank {rank}, pid {os.getpid()}\n"):
            yield relation, seed


def warn(message: str) -> None:
    """One line on the console about what a run does differently from what was asked (not an error)."""
    print(f"lre-pl: warning: {message}", file=sys.stderr)


class Sweep:
    """Runs a :class:`SweepConfig`: estimation where no bundle exists, evaluation where no rows exist."""

    def __init__(self, config: SweepConfig, command: str | None = None):
        self.config = config
        self.command = command
        #: {relation name: as given}: the tasks, files and rows are named by the name.
        self.given = named_relations(config.check())
        self.relations = list(self.given)
        self.deadline = Deadline.after(config.stop_after_hours)
        self.grid = config.grid()
        self.root = Path(config.output_dir)
        self.folder = SweepFolder(self.root)
        self.check_folder()
        check_writable_folder(self.root, "output_dir")
        self.check_paths()
        self.decoder: Decoder | None = None  # made at the first evaluation (the LM is loaded once)
        #: This process among those of a ``spread: tasks`` sweep (``None``: one process, or prompts spread).
        self.place: Place | None = None

    def check_folder(self) -> None:
        """A rerun into a folder may change which relations and trials it runs (and how), not what its
        rows mean: a different model, grid or split in one folder would mix incomparable rows."""
        before = self.folder.read_config()
        if before is None:
            return
        now = json.loads(json.dumps(asdict(self.config)))  # as written: tuples as lists, layers parsed
        # A field newer than the folder's config had, when it was swept, its default.
        defaults = json.loads(json.dumps(asdict(SweepConfig())))
        before = {**defaults, **before}
        changed = [name for name in now if name not in RESUMABLE_FIELDS and before[name] != now[name]]
        if changed:
            name = changed[0]
            raise InputError(
                f"output_dir={self.config.output_dir!r} was swept with {name}={before[name]!r}, not "
                f"{now[name]!r}: rerun with the folder's {', '.join(changed)} or give a new output_dir"
            )
        for name, given in self.given.items():  # a relation's bundles and rows were made from its copy
            copy = self.folder.relation_copy(name)
            if copy.exists() and not same_relation(load_relation(copy), load_relation(given)):
                raise InputError(
                    f"relation {name!r} was swept in {self.root} from another file ({copy} differs from "
                    f"{given}): give that file again, rename the relation, or give a new output_dir"
                )

    def check_paths(self) -> None:
        """Every task's files named once, before any work: a symbolic link among them is one line."""
        for relation, seed in self.work():
            self.folder.done(relation, seed)
            self.folder.claim(relation, seed)

    def check_against_model(self) -> None:
        """Layers and ranks against the model (loaded once; estimation reuses it), before any work."""
        c = self.config
        lm = load_language_model(c.model, c.dtype, self._device())
        if c.layers != "all":
            for layer in c.layers:
                lm.check_layer(layer)
        if any(rank > lm.hidden_size for rank in c.ranks):
            raise InputError(
                f"ranks={c.ranks} out of range for {c.model}: W is {lm.hidden_size} x {lm.hidden_size}, "
                f"use 0..{lm.hidden_size}"
            )

    def bundle_path(self, relation: str, seed: int) -> Path:
        return self.folder.bundle(relation, seed)

    def rows_path(self, relation: str, seed: int) -> Path:
        return self.folder.rows(relation, seed)

    def work(self) -> list[tuple[str, int]]:
        """Every (relation, trial) of this command, in order."""
        return [(relation, seed) for relation in self.relations for seed in self.config.trials]

    def repair(self) -> None:
        """Make damaged files count as not done, with a warning line each (global rank 0, under the
        folder's lock, before any work; the other ranks see the same files): partial files of runs that
        died (SIGKILL) are removed, a rows file without its footer is evaluated again, and a bundle
        that is missing or damaged (cut short; read whole, CRCs too, where its rows are to be made) is
        estimated again. Its rows, where whole, are kept: the same trial estimates the same bundle."""
        for partial in (*self.root.glob("*.partial*"), *self.root.glob("rows/*.partial*"),
                        *self.root.glob("bundles/*/*.partial*")):  # fmt: skip
            partial.unlink(missing_ok=True)
        shutil.rmtree(self.folder.claims, ignore_errors=True)  # a dead run's claims (this one holds the lock)
        for relation, seed in self.work():
            rows, bundle = self.rows_path(relation, seed), self.bundle_path(relation, seed)
            if rows.exists() and not rows_complete(rows):
                warn(f"{rows} is cut short or damaged: its trial is evaluated again")
                rows.unlink()
            if not bundle.exists():
                if rows.exists():
                    warn(f"{bundle} is missing: its trial is estimated again (its rows are kept)")
                continue
            damage = zip_damage(bundle, whole=not rows.exists())
            if damage:
                warn(f"{bundle} is damaged ({damage}): its trial is estimated again")
                bundle.unlink()

    def estimate(self, relation: str, seed: int) -> int:
        """One Lightning fit writing the bundle; returns this process's global rank."""
        c = self.config
        pl.seed_everything(seed, verbose=False)
        module = LinearRelationModule(
            model=c.model, dtype=c.dtype, layers=c.layers, chunk_size=c.chunk_size,
            bundle_path=str(self.bundle_path(relation, seed)), keep_jacobians=c.keep_jacobians,
            bundle_min_known=c.min_known if c.known_only else 0,
        )  # fmt: skip
        data = RelationDataModule(
            relation=self.given[relation], model=c.model, dtype=c.dtype, n_train=c.n_train, seed=seed,
            batch_size=c.batch_size, filter_known=False,
        )  # fmt: skip
        # One estimation pass, no validation loop (evaluation reads the bundle), no logger or checkpoint:
        # the sweep's own bar and files say what happens. ``trainer`` may override any of these.
        settings = dict(
            max_epochs=1, num_sanity_val_steps=0, limit_val_batches=0, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, logger=False, default_root_dir=str(self.root),
        )  # fmt: skip
        trainer = pl.Trainer(**{**settings, **self._trainer_settings()})
        trainer.fit(module, datamodule=data)
        return trainer.global_rank

    def _trainer_settings(self) -> dict:
        """``trainer`` as given; in a ``spread: tasks`` process, a one-device fit on its own device."""
        if self.place is None:
            return self.config.trainer
        settings = {
            k: v for k, v in self.config.trainer.items() if k not in ("strategy", "devices", "num_nodes")
        }
        return {**settings, "devices": [self._cuda_index()] if self._on_gpu() else 1}

    def _on_gpu(self) -> bool:
        accelerator = self.config.trainer.get("accelerator", "auto")
        return torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")

    def _cuda_index(self) -> int:
        """This process's GPU: its local rank (or the ``devices`` list's entry there); 0 for global rank 0's
        root device under the prompts spread (its estimation trainer's, where the LM loaded there is reused)."""
        if self.place is None:
            return 0
        devices = self.config.trainer.get("devices")
        local = self.place.local_rank
        return devices[local] if isinstance(devices, (list, tuple)) and local < len(devices) else local

    def evaluate(self, relation: str, seed: int) -> None:
        c = self.config
        bundle = Bundle.load(self.bundle_path(relation, seed))
        lm = load_language_model(c.model, c.dtype, self._device())
        self.decoder = self.decoder or Decoder(lm, c.top_k)  # its vocabulary strings are made once
        write_rows(self.rows_path(relation, seed), BundleEvaluation(bundle, self.grid, self.decoder).rows(lm))

    def _device(self) -> str:
        return f"cuda:{self._cuda_index()}" if self._on_gpu() else "cpu"

    def run(self) -> Path | None:
        """Every (relation, trial); returns the sweep folder on global rank 0 (``None`` on others)."""
        threads = self.config.threads
        if self.config.spread == "tasks":
            place = find_place(self.config.trainer)
            if place.world_size > 1:
                # The node's cores shared among its processes, unless ``threads`` says otherwise.
                torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // place.local_world_size))
                return self._run_tasks(place)
        if self.config.stop_after_hours is not None and find_place(self.config.trainer).world_size > 1:
            raise InputError(
                "stop_after_hours needs spread: tasks with several processes (under spread: prompts every "
                "process would have to stop at the same task)"
            )
        if threads is not None:  # DDP children inherit it, and Lightning's launcher then leaves it be
            torch.set_num_threads(threads)
            os.environ["OMP_NUM_THREADS"] = str(threads)
        return self._run_prompts()

    def _run_tasks(self, place: Place) -> Path | None:
        """The ``tasks`` spread: every process takes whole tasks, largest first, until none is left."""
        from lightning_fabric.utilities.rank_zero import rank_zero_only as fabric_rank_zero_only

        rank = place.global_rank
        self.place = place
        # Lightning's rank for its rank-zero-only messages (a one-device Trainer leaves it as it is).
        rank_zero_only.rank = fabric_rank_zero_only.rank = rank
        with self._folder_held(rank):  # its repair before the other processes start or pass the barrier
            work = self.work()
            bar = tqdm(total=len(work), desc="sweep", unit="trial", disable=rank != 0)

            def progress() -> None:  # every process's finished tasks: whole rows files
                bar.update(sum(self.rows_path(relation, seed).exists() for relation, seed in work) - bar.n)

            with Processes(place) as processes, bar:
                processes.barrier()
                progress()
                for relation, seed in claimed_tasks(
                    self.folder, largest_first(work, self.given), rank, self.deadline
                ):
                    bar.set_postfix_str(f"{relation}, trial {seed}")
                    if not self.bundle_path(relation, seed).exists():
                        self.estimate(relation, seed)
                    if not self.rows_path(relation, seed).exists():
                        self.evaluate(relation, seed)
                    progress()
                    processes.check()  # a child that failed ends the command before this one claims more
                processes.barrier(while_waiting=progress)
                progress()
                processes.join()
            if rank != 0:
                return None
            shutil.rmtree(self.folder.claims, ignore_errors=True)
            self._write_report()
        return self.root

    @contextlib.contextmanager
    def _folder_held(self, rank: int):
        """Global rank 0, before any work: the checks against the model, then the folder's lock for the
        whole sweep (the other processes work under it), the folder checked again under it (a sweep that
        ended meanwhile may have set the grid), the command written and the folder repaired."""
        if rank != 0:
            yield
            return
        self.check_against_model()
        with folder_lock(self.root, "sweep"):
            self.check_folder()
            self._write_command()
            self._write_relations()
            self.repair()
            yield

    def _run_prompts(self) -> Path | None:
        """The ``prompts`` spread (and one process): one fit per task over every process."""
        # The global rank as Lightning reads it from the environment (RANK, LOCAL_RANK, SLURM_PROCID, ...):
        # a DDP child re-runs this command; after a fit, the trainer's global rank.
        rank = rank_zero_only.rank
        with self._folder_held(rank):
            bar = tqdm(self.work(), desc="sweep", unit="trial", disable=rank != 0)
            for relation, seed in bar:
                if self.folder.done(relation, seed):
                    continue
                if self.deadline.passed():
                    break
                bar.set_postfix_str(f"{relation}, trial {seed}")
                if not self.bundle_path(relation, seed).exists():
                    rank = self.estimate(relation, seed)
                if rank == 0 and not self.rows_path(relation, seed).exists():
                    self.evaluate(relation, seed)
            bar.close()
            if rank != 0:
                return None
            self._write_report()
        return self.root

    def _write_report(self) -> None:
        from lre_pl.experiments.sweep.report import write_report

        # The folder's report: every row file in it (one grid, see check_folder), earlier commands' too.
        listed = listed_tasks(self.config.relations, self.config.trials)
        write_report(self.root, self.folder.row_files(), self.config, listed)

    def _write_command(self) -> None:
        """The exact commands (``command.txt``: every distinct command that ran into this folder, in
        order) and the resolved config of the last one, beside the results they make."""
        if self.command:
            commands = self.folder.read_commands()
            if self.command not in commands:
                write_text_atomically(
                    self.folder.commands, "".join(f"{line}\n" for line in [*commands, self.command])
                )
        write_text_atomically(self.folder.config, json.dumps(asdict(self.config), indent=2) + "\n")

    def _write_relations(self) -> None:
        """A copy of each relation given as a JSON file, under its name (``relations/``): what the
        commands after the sweep read it from, wherever the file goes."""
        for name, given in self.given.items():
            path = Path(given).expanduser()
            if path.is_file():
                write_bytes_atomically(self.folder.relation_copy(name), path.read_bytes())
