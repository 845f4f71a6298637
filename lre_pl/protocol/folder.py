"""The sweep folder and the β study folder: which file holds what (the one place that knows the layout).

A name never becomes a path: ``<relation>`` (and ``<model>``) below is :func:`file_name` of the
relation's own name (the model spec's last part), and every path is made by :meth:`OutputFolder.path`,
which refuses one that would leave its folder through a symbolic link.

A sweep folder (``lre-pl sweep --output_dir``)::

    sweep_config.json           the resolved config of the last command (its grid never changes)
    command.txt                 every distinct command that ran into the folder, in order
    bundles/<relation>/trial_<seed>.pt     estimation (W, b, states): the expensive stage
    rows/<relation>__trial_<seed>.jsonl    evaluation rows of that bundle: the cheap stage
    claims/<relation>__trial_<seed>        while a ``spread: tasks`` sweep runs: the task a process took
    relations/<relation>.json              a copy of each relation the sweep was given as a JSON file
    results.csv, summary.md, *.png, tensorboard/          made from the rows alone

A β study folder (``<sweep>/beta_study`` or ``<output_dir>/<sweep folder name>``)::

    sweep_config.json, sweep_command.txt   copies of the sweep's, for the report
    study_settings.json                    what the rows depend on besides the sweep
    sweep_unfinished.txt                   what the sweep lacked, when studied unfinished on purpose
    rows/<question>/<relation>__trial_<seed>.jsonl   a per-bundle question's rows
    rows/<question>.jsonl                  a cross-bundle question's rows
    tables/<question>/<relation>__trial_<seed>.md    what rows cannot hold (token strings)
    beta_study.md, results.csv, *.png, tensorboard/

An attribute-lens folder (``lre-pl distracted-lens``, ``<sweep>/attribute_lens`` by default)::

    rows/<relation>__trial_<seed>.jsonl      the distracted prompts' rows of that bundle
    tables/<relation>__trial_<seed>.md       its first samples' top-1 tokens (what rows cannot hold)
    attribute_lens.md, results.csv, *.png, tensorboard/

A cross-relation folder (``<sweep>/cross_relation`` or ``lre-pl cross-relation --output_dir``)::

    sweep_config.json, sweep_command.txt   copies of the sweep's, for the report
    rows.jsonl                             one row per (r, r′, trial, metric)
    results.csv, cross_relation.md, type_share.png, shared_subject_recall.png, tensorboard/
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from lre_pl.dataset.relations import Relation, load_relation
from lre_pl.errors import InputError
from lre_pl.files import inside, write_text_atomically

#: A name that is its own file name once its spaces are underscores (every shipped relation's, and
#: model names such as ``smollm2-135m``): ASCII letters, digits, dots and dashes, words apart by one
#: space, starting with a letter or digit, at most :data:`PLAIN_LENGTH` characters. No underscore: a
#: space becomes one.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*(?: [A-Za-z0-9.-]+)*")
PLAIN_LENGTH = 100


def file_name(name: str) -> str:
    """``name`` (a relation's, a model's) as one file name, the same on every call and for no other name.

    A plain name (:data:`PLAIN_NAME`) has its spaces made underscores (``country capital city`` ->
    ``country_capital_city``). Any other name (``capital/city``, ``..``, ``a_b``, a leading dot, control
    characters, a very long one) has every character but ASCII letters, digits, dots and dashes (and a
    leading dot or dash) made ``_``, is cut to 60 characters, and gets ``__`` and the first 16 hex
    digits of the SHA-256 of the name appended (``capital/city`` -> ``capital_city__<16 hex>``). A plain
    name's file name holds no ``__``, any other's ends with ``__<hash>``: two names never share one."""
    if len(name) <= PLAIN_LENGTH and PLAIN_NAME.fullmatch(name):
        return name.replace(" ", "_")
    kept = re.sub(r"^[.-]|[^A-Za-z0-9.-]", "_", name)[:60]
    return f"{kept}__{hashlib.sha256(name.encode(errors='surrogatepass')).hexdigest()[:16]}"


def model_file_name(model: str) -> str:
    """A model spec's name in file names: :func:`file_name` of its last part (a hub id's model, a local
    folder's name: ``HuggingFaceTB/SmolLM2-135M`` -> ``SmolLM2-135M``)."""
    return file_name(Path(model).name)


def trial_name(relation: str, trial: int) -> str:
    """``<relation>__trial_<seed>``: one bundle's name in rows and tables (``relation``: its name)."""
    return f"{file_name(relation)}__trial_{trial}"


def results_folder(results_dir: str | Path, model: str) -> Path:
    """``<results_dir>/<model>/``: where a command copies a model's results for committing."""
    return inside(Path(results_dir), model_file_name(model))


def read_json(path: Path, what: str) -> dict:
    """A JSON file the protocol wrote; a missing or damaged one is a one-line error."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path} is missing: {what}") from None
    except (OSError, ValueError) as error:  # cut short, not UTF-8, unreadable
        raise InputError(f"{path} is damaged ({type(error).__name__}): {what}") from None


@dataclass(frozen=True)
class OutputFolder:
    """A folder a command writes in: each of its paths is made by :meth:`path`, so none leaves it."""

    root: Path

    def path(self, *parts: str) -> Path:
        """``root / parts``, each part one file name and none of them a symbolic link (one line)."""
        return inside(self.root, *parts)

    @property
    def results(self) -> Path:
        """``results.csv``: every row of the folder."""
        return self.path("results.csv")

    @property
    def tensorboard(self) -> Path:
        return self.path("tensorboard")

    def figure(self, stem: str) -> Path:
        return self.path(f"{stem}.png")


@dataclass(frozen=True)
class SweepFolder(OutputFolder):
    """The files of one sweep folder. A (relation, trial) is named by the relation's name, however the
    sweep was given it (a shipped name, its file stem, a JSON file)."""

    @property
    def config(self) -> Path:
        return self.path("sweep_config.json")

    @property
    def commands(self) -> Path:
        return self.path("command.txt")

    @property
    def summary(self) -> Path:
        return self.path("summary.md")

    def bundle(self, relation: str, trial: int) -> Path:
        return self.path("bundles", file_name(relation), f"trial_{trial}.pt")

    def rows(self, relation: str, trial: int) -> Path:
        return self.path("rows", f"{trial_name(relation, trial)}.jsonl")

    def row_files(self) -> list[Path]:
        """Every rows file of the folder, sorted (the report covers them all: one grid per folder)."""
        return sorted(self.path("rows").glob("*.jsonl"))

    def done(self, relation: str, trial: int) -> bool:
        """Whether the task (relation, trial) is finished: its bundle and its rows exist (each file is
        whole or absent: a sweep's repair removes damaged ones)."""
        return self.bundle(relation, trial).exists() and self.rows(relation, trial).exists()

    @property
    def claims(self) -> Path:
        """Where the processes of a ``spread: tasks`` sweep claim tasks (removed at its end)."""
        return self.path("claims")

    def claim(self, relation: str, trial: int) -> Path:
        """The file a process creates (exclusively) to take the task (relation, trial)."""
        return self.path("claims", trial_name(relation, trial))

    def relation_copy(self, relation: str) -> Path:
        """The copy of a relation the sweep was given as a JSON file, by its name."""
        return self.path("relations", f"{file_name(relation)}.json")

    def relation(self, name: str) -> Relation:
        """The relation ``name`` as the sweep estimated it: the folder's copy of its file, else the shipped
        relation of that name (one line where there is neither)."""
        copy = self.relation_copy(name)
        return load_relation(copy) if copy.exists() else load_relation(name)

    @property
    def beta_study(self) -> Path:
        """The β study's folder beside the sweep (``lre-pl beta-study`` without ``output_dir``)."""
        return self.path("beta_study")

    @property
    def attribute_lens(self) -> Path:
        """``lre-pl distracted-lens``'s folder beside the sweep (without ``output_dir``)."""
        return self.path("attribute_lens")

    @property
    def cross_relation(self) -> Path:
        """``lre-pl cross-relation``'s folder beside the sweep (without ``output_dir``)."""
        return self.path("cross_relation")

    def read_config(self) -> dict | None:
        """The folder's ``sweep_config.json`` (``None`` where there is none); one line where it is damaged."""
        if not self.config.exists():
            return None
        return read_json(
            self.config,
            "delete it and rerun the folder's last sweep command (command.txt), which writes it again",
        )

    def read_commands(self) -> list[str]:
        return self.commands.read_text().splitlines() if self.commands.exists() else []


@dataclass(frozen=True)
class SweepCopies(OutputFolder):
    """A folder beside a sweep that keeps copies of the sweep's config and commands for its report."""

    @property
    def sweep_config(self) -> Path:
        return self.path("sweep_config.json")

    @property
    def sweep_commands(self) -> Path:
        return self.path("sweep_command.txt")

    def copy_from(self, sweep: SweepFolder) -> None:
        """Copy the sweep's config and its commands here (a sweep run without a command on record is named
        by its folder)."""
        commands = sweep.read_commands() or [f"(the sweep in {sweep.root})"]
        write_text_atomically(self.sweep_commands, "".join(f"{line}\n" for line in commands))
        write_text_atomically(self.sweep_config, sweep.config.read_text())


@dataclass(frozen=True)
class StudyFolder(SweepCopies):
    """The files of one β study folder."""

    @property
    def settings(self) -> Path:
        return self.path("study_settings.json")

    @property
    def report(self) -> Path:
        return self.path("beta_study.md")

    @property
    def unfinished(self) -> Path:
        """What an unfinished sweep lacked when it was studied (``allow_unfinished``); absent otherwise."""
        return self.path("sweep_unfinished.txt")

    def rows(self, question: str, relation: str | None = None, trial: int | None = None) -> Path:
        """A per-bundle question's rows file (``relation`` and ``trial`` given), or a cross-bundle one's."""
        if relation is None:
            return self.path("rows", f"{question}.jsonl")
        return self.path("rows", question, f"{trial_name(relation, trial)}.jsonl")

    def table(self, question: str, relation: str, trial: int) -> Path:
        return self.path("tables", question, f"{trial_name(relation, trial)}.md")

    def row_files(self) -> list[Path]:
        return sorted(self.path("rows").rglob("*.jsonl"))

    def answered(self) -> list[str]:
        """The questions that have rows (a folder or a file under ``rows/``)."""
        folder = self.path("rows")
        return [path.stem for path in folder.iterdir()] if folder.is_dir() else []

    def tables(self) -> dict[str, list[str]]:
        """{question: its markdown tables, in file order}."""
        return {
            folder.name: [path.read_text() for path in sorted(folder.glob("*.md"))]
            for folder in sorted(self.path("tables").glob("*"))
        }


@dataclass(frozen=True)
class LensFolder(OutputFolder):
    """The files of one attribute-lens (distracted prompts) folder."""

    def rows(self, relation: str, trial: int) -> Path:
        return self.path("rows", f"{trial_name(relation, trial)}.jsonl")

    def table(self, relation: str, trial: int) -> Path:
        return self.path("tables", f"{trial_name(relation, trial)}.md")

    def row_files(self) -> list[Path]:
        return sorted(self.path("rows").glob("*.jsonl"))

    def tables(self) -> list[str]:
        """Every bundle's markdown table, in file order."""
        return [path.read_text() for path in sorted(self.path("tables").glob("*.md"))]

    @property
    def report(self) -> Path:
        return self.path("attribute_lens.md")


@dataclass(frozen=True)
class CrossRelationFolder(SweepCopies):
    """The files of one cross-relation folder."""

    @property
    def rows(self) -> Path:
        return self.path("rows.jsonl")

    @property
    def report(self) -> Path:
        return self.path("cross_relation.md")
