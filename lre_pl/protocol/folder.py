"""The sweep folder and the β study folder: which file holds what (the one place that knows the layout).

A sweep folder (``lre-pl sweep --output_dir``)::

    sweep_config.json           the resolved config of the last command (its grid never changes)
    command.txt                 every distinct command that ran into the folder, in order
    bundles/<relation>/trial_<seed>.pt     estimation (W, b, states): the expensive stage
    rows/<relation>__trial_<seed>.jsonl    evaluation rows of that bundle: the cheap stage
    claims/<relation>__trial_<seed>        while a ``spread: tasks`` sweep runs: the task a process took
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

import json
from dataclasses import dataclass
from pathlib import Path

from lre_pl.errors import InputError
from lre_pl.files import write_text_atomically


def slug(relation: str) -> str:
    """A relation's name in file names: spaces to underscores; a JSON file's stem."""
    return Path(relation).stem.replace(" ", "_") if relation.endswith(".json") else relation.replace(" ", "_")


def trial_name(relation: str, trial: int) -> str:
    """``<relation>__trial_<seed>``: one bundle's name in rows and tables."""
    return f"{slug(relation)}__trial_{trial}"


def read_json(path: Path, what: str) -> dict:
    """A JSON file the protocol wrote; a missing or damaged one is a one-line error."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path} is missing: {what}") from None
    except (OSError, ValueError) as error:  # cut short, not UTF-8, unreadable
        raise InputError(f"{path} is damaged ({type(error).__name__}): {what}") from None


@dataclass(frozen=True)
class SweepFolder:
    """The files of one sweep folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "sweep_config.json"

    @property
    def commands(self) -> Path:
        return self.root / "command.txt"

    def bundle(self, relation: str, trial: int) -> Path:
        return self.root / "bundles" / slug(relation) / f"trial_{trial}.pt"

    def rows(self, relation: str, trial: int) -> Path:
        return self.root / "rows" / f"{trial_name(relation, trial)}.jsonl"

    def row_files(self) -> list[Path]:
        """Every rows file of the folder, sorted (the report covers them all: one grid per folder)."""
        return sorted((self.root / "rows").glob("*.jsonl"))

    def done(self, relation: str, trial: int) -> bool:
        """Whether the task (relation, trial) is finished: its bundle and its rows exist (each file is
        whole or absent: a sweep's repair removes damaged ones)."""
        return self.bundle(relation, trial).exists() and self.rows(relation, trial).exists()

    @property
    def claims(self) -> Path:
        """Where the processes of a ``spread: tasks`` sweep claim tasks (removed at its end)."""
        return self.root / "claims"

    def claim(self, relation: str, trial: int) -> Path:
        """The file a process creates (exclusively) to take the task (relation, trial)."""
        return self.claims / trial_name(relation, trial)

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
class SweepCopies:
    """A folder beside a sweep that keeps copies of the sweep's config and commands for its report."""

    root: Path

    @property
    def sweep_config(self) -> Path:
        return self.root / "sweep_config.json"

    @property
    def sweep_commands(self) -> Path:
        return self.root / "sweep_command.txt"

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
        return self.root / "study_settings.json"

    @property
    def report(self) -> Path:
        return self.root / "beta_study.md"

    @property
    def unfinished(self) -> Path:
        """What an unfinished sweep lacked when it was studied (``allow_unfinished``); absent otherwise."""
        return self.root / "sweep_unfinished.txt"

    def rows(self, question: str, relation: str | None = None, trial: int | None = None) -> Path:
        """A per-bundle question's rows file (``relation`` and ``trial`` given), or a cross-bundle one's."""
        if relation is None:
            return self.root / "rows" / f"{question}.jsonl"
        return self.root / "rows" / question / f"{trial_name(relation, trial)}.jsonl"

    def table(self, question: str, relation: str, trial: int) -> Path:
        return self.root / "tables" / question / f"{trial_name(relation, trial)}.md"

    def row_files(self) -> list[Path]:
        return sorted((self.root / "rows").rglob("*.jsonl"))

    def answered(self) -> list[str]:
        """The questions that have rows (a folder or a file under ``rows/``)."""
        folder = self.root / "rows"
        return [path.stem for path in folder.iterdir()] if folder.is_dir() else []

    def tables(self) -> dict[str, list[str]]:
        """{question: its markdown tables, in file order}."""
        return {
            folder.name: [path.read_text() for path in sorted(folder.glob("*.md"))]
            for folder in sorted((self.root / "tables").glob("*"))
        }


@dataclass(frozen=True)
class LensFolder:
    """The files of one attribute-lens (distracted prompts) folder."""

    root: Path

    def rows(self, relation: str, trial: int) -> Path:
        return self.root / "rows" / f"{trial_name(relation, trial)}.jsonl"

    def table(self, relation: str, trial: int) -> Path:
        return self.root / "tables" / f"{trial_name(relation, trial)}.md"

    def row_files(self) -> list[Path]:
        return sorted((self.root / "rows").glob("*.jsonl"))

    @property
    def report(self) -> Path:
        return self.root / "attribute_lens.md"


@dataclass(frozen=True)
class CrossRelationFolder(SweepCopies):
    """The files of one cross-relation folder."""

    @property
    def rows(self) -> Path:
        return self.root / "rows.jsonl"

    @property
    def table(self) -> Path:
        return self.root / "results.csv"

    @property
    def report(self) -> Path:
        return self.root / "cross_relation.md"

    def figure(self, stem: str) -> Path:
        return self.root / f"{stem}.png"
