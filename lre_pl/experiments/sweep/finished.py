"""A finished sweep folder as the experiments after it read it: its config, its grid, and each
evaluated bundle's LRE at the (layer, β) the sweep chose on the bundle's dev split.

The β study, the attribute lens's distracted prompts and the cross-relation application all start
here, so that "the LRE of a relation" means one thing: the sweep's own dev choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lre_pl.errors import InputError
from lre_pl.lm.models import LanguageModel, load_language_model, parse_layer
from lre_pl.lre.bundle import Bundle
from lre_pl.protocol.folder import SweepFolder
from lre_pl.protocol.rows import read_rows

Layer = int | str
BundleKey = tuple[str, int]  # (relation, trial)


def chosen_points(rows: list[dict]) -> dict[BundleKey, tuple[Layer, float]]:
    """{(relation, trial): the LRE's (layer, beta) chosen on the dev split} from a sweep's rows."""
    return {
        (row["relation"], row["trial"]): (parse_layer(row["layer"]), row["beta"])
        for row in rows
        if row["kind"] == "selected" and row["selection"] == "dev" and row["estimator"] == "lre"
        and row["metric"] == "faithfulness@1"
    }  # fmt: skip


def nothing_evaluated(root: Path) -> InputError:
    return InputError(f"{root} has no evaluated relation (rows/*.jsonl): finish the sweep first")


@dataclass(frozen=True)
class FinishedSweep:
    """A sweep folder's config and the dev-chosen (layer, β) of every evaluated bundle."""

    folder: SweepFolder
    config: dict
    """The folder's ``sweep_config.json``."""
    points: dict[BundleKey, tuple[Layer, float]]
    """(relation, trial) -> the LRE's (layer, β) chosen on the bundle's dev split by the sweep. A
    bundle with too few known samples has no chosen point and is absent."""

    @classmethod
    def read(cls, root: str | Path, what: str = "sweep_dir") -> FinishedSweep:
        """The sweep in ``root``, or one line naming what is missing (``what``: the option that gave it)."""
        folder = SweepFolder(Path(root))
        if not folder.root.is_dir():
            raise InputError(
                f"{what} {str(root)!r} is not a folder: give the output_dir of a finished lre-pl sweep"
            )
        config = folder.read_config()
        if config is None:
            raise InputError(
                f"{what} {str(root)!r} holds no sweep_config.json: run lre-pl sweep into it first"
            )
        points = chosen_points(read_rows(folder.row_files()))
        if not points:
            raise nothing_evaluated(folder.root)
        return cls(folder, config, points)

    @property
    def model(self) -> str:
        return self.config["model"]

    @property
    def sweep_config(self):
        """The config as the sweep's :class:`~lre_pl.experiments.sweep.runner.SweepConfig` (its grid,
        its selection rule)."""
        from lre_pl.experiments.sweep.runner import SweepConfig

        return SweepConfig(**self.config)

    def keys(
        self, relations: Sequence[str] | None = None, trials: Sequence[int] | None = None
    ) -> list[BundleKey]:
        """The evaluated bundles, by relation name, then by trial; only ``relations`` and ``trials`` where
        given (a name the sweep did not evaluate is a one-line error)."""
        keys = sorted(self.points)
        if relations is not None:
            unknown = sorted(set(relations) - {relation for relation, _ in keys})
            if unknown:
                raise InputError(
                    f"relation {unknown[0]!r} has no evaluated bundle in {self.folder.root}: "
                    "choose among the sweep's evaluated relations, or sweep it first"
                )
            keys = [key for key in keys if key[0] in relations]
        if trials is not None:
            keys = [key for key in keys if key[1] in trials]
        return keys

    def evaluated_relations(self, trial: int | None = None) -> set[str]:
        """The relations with an evaluated bundle here (of ``trial`` where given)."""
        return {relation for relation, seed in self.points if trial is None or seed == trial}

    def split_relations(
        self, requested: Sequence[str], trial: int | None = None
    ) -> tuple[list[str], list[str]]:
        """The names of ``requested`` (as a config's ``relations`` gives them: names, JSON files,
        ``[<category>]``, ``[all]``, or the name of a custom relation this sweep evaluated) that have an
        evaluated bundle here (of ``trial`` where given), and those that have none (not swept, or too
        few known samples), each in the request's order. A name that is neither the sweep's nor shipped
        is a one-line error naming the shipped ones."""
        from lre_pl.experiments.sweep.runner import relation_names

        evaluated, has = self.evaluated_relations(), self.evaluated_relations(trial)
        names = [
            name for item in requested for name in ([item] if item in evaluated else relation_names([item]))
        ]
        return [name for name in names if name in has], [name for name in names if name not in has]

    def studied_relations(self, requested: Sequence[str], option: str, trial: int | None = None) -> list[str]:
        """The evaluated relations of ``requested`` (:meth:`split_relations`), checked before any model
        loads: none of them is one line naming them and the relations the sweep has; some is a warning
        line naming those left out (the report names them too)."""
        from lre_pl.experiments.sweep.runner import warn

        if not requested:
            raise InputError(f"{option} is empty: give [all], a category such as [factual], or names")
        found, lacking = self.split_relations(requested, trial)
        of_trial = "" if trial is None else f" of trial {trial}"
        if not found:
            has = sorted(self.evaluated_relations(trial))
            raise InputError(
                f"{option}={list(requested)}: the sweep in {self.folder.root} has no evaluated bundle"
                f"{of_trial} of {', '.join(lacking)}; it has {', '.join(has) or 'none'}: choose among those, "
                "or sweep them first"
            )
        if lacking:
            warn(
                f"{option}: the sweep in {self.folder.root} has no evaluated bundle{of_trial} of "
                f"{', '.join(lacking)}; left out"
            )
        return found

    def bundle(self, relation: str, trial: int) -> Bundle:
        return Bundle.load(self.folder.bundle(relation, trial))

    def load_model(self, device: str | None = None) -> LanguageModel:
        import torch

        device = device or ("cuda:0" if torch.cuda.is_available() else "cpu")
        return load_language_model(self.model, self.config.get("dtype", "float32"), device)
