"""Where the attribute lens finds a relation's operators: a fit's run folder, one operator file, or a
finished sweep's bundle (every estimated layer, at the β the sweep chose on dev)."""

from __future__ import annotations

from pathlib import Path

from lre_pl.errors import InputError
from lre_pl.experiments.sweep.finished import FinishedSweep
from lre_pl.lre.operator import LinearRelationOperator

Layer = int | str


def lens_operators(
    source: str | Path, relation: str | None = None, trial: int = 0
) -> dict[Layer, LinearRelationOperator]:
    """{layer: operator} of one relation, from ``source``:

    - a fit's run folder (``lightning_logs/version_N``): its ``operators/layer_<layer>.pt`` (a fit of
      several layers), else its ``operator.pt``;
    - an operator file (``operator.pt``);
    - a sweep folder with ``relation`` (and ``trial``): every layer of its bundle, each at the β the
      sweep chose on the bundle's dev split.
    """
    path = Path(source)
    if path.is_file():
        operator = LinearRelationOperator.load(path)
        return {operator.layer: operator}
    if not path.is_dir():
        raise InputError(
            f"operators {str(source)!r} does not exist: give a fit's run folder (lightning_logs/version_N), "
            "an operator.pt, or a sweep folder with --relation"
        )
    if (path / "sweep_config.json").exists():
        if relation is None:
            raise InputError(
                f"{str(source)!r} is a sweep folder: name the relation whose LREs to use (--relation)"
            )
        sweep = FinishedSweep.read(path, "operators")
        if (relation, trial) not in sweep.points:
            raise InputError(
                f"relation {relation!r} trial {trial} has no evaluated bundle in {str(source)!r}: choose among "
                f"{sorted({name for name, _ in sweep.points})}"
            )
        bundle = sweep.bundle(relation, trial)
        beta = sweep.points[relation, trial][1]
        return {layer: bundle.operator(layer, beta) for layer in bundle.layers}
    files = sorted((path / "operators").glob("layer_*.pt")) or [path / "operator.pt"]
    if not files[0].exists():
        raise InputError(
            f"{str(source)!r} holds no operator.pt or operators/layer_<layer>.pt: give the run folder of a "
            "finished lre-pl fit"
        )
    operators = [LinearRelationOperator.load(file) for file in files]
    return {operator.layer: operator for operator in operators}
