"""Where the attribute lens finds a relation's operators: a fit's run folder, one operator file, or a
finished sweep's bundle (every estimated layer, at the β the sweep chose on dev)."""

from __future__ import annotations

from pathlib import Path

from lre_pl.errors import InputError
from lre_pl.experiments.sweep.finished import FinishedSweep
from lre_pl.lre.operator import LinearRelationOperator

Layer = int | str


def lens_operators(
    source: str | Path, relation: str | None = None, trial: int | None = None
) -> dict[Layer, LinearRelationOperator]:
    """{layer: operator} of one relation, from ``source``:

    - a fit's run folder (``lightning_logs/version_N``): its ``operators/layer_<layer>.pt`` (a fit of
      several layers), else its ``operator.pt``; each file must hold its name's layer, and all of one
      model, relation and width;
    - an operator file (``operator.pt``);
    - a sweep folder with ``relation`` (and ``trial``, default 0): every layer of its bundle, each at the
      β the sweep chose on the bundle's dev split.

    ``relation`` and ``trial`` choose a sweep's bundle: with anything else they are refused, not ignored.
    """
    path = Path(source)
    if not path.exists():
        raise InputError(
            f"operators {str(source)!r} does not exist: give a fit's run folder (lightning_logs/version_N), "
            "an operator.pt, or a sweep folder with --relation"
        )
    is_sweep = path.is_dir() and (path / "sweep_config.json").exists()
    given = [option for option, value in (("--relation", relation), ("--trial", trial)) if value is not None]
    if given and not is_sweep:
        what = "an operator file" if path.is_file() else "a fit's run folder"
        options, verb = " and ".join(given), "choose" if len(given) > 1 else "chooses"
        raise InputError(
            f"{options} {verb} a sweep's bundle, but {str(source)!r} is {what}, which holds one relation: "
            f"drop {options}, or give a sweep folder"
        )
    if path.is_file():
        operator = LinearRelationOperator.load(path)
        return {operator.layer: operator}
    if is_sweep:
        trial = 0 if trial is None else trial
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
    operators = {file: LinearRelationOperator.load(file) for file in files}
    first_file, first = next(iter(operators.items()))
    for file, operator in operators.items():
        named = file.stem.removeprefix("layer_") if file.parent.name == "operators" else str(operator.layer)
        if str(operator.layer) != named:
            raise InputError(
                f"{str(file)!r} holds an LRE of layer {operator.layer}, not of layer {named} (its name): "
                "the run folder was changed; give the run folder of one lre-pl fit"
            )
        mine, theirs = of_run(operator), of_run(first)
        if mine != theirs:
            raise InputError(
                f"{str(file)!r} holds an LRE of {mine}, but {str(first_file)!r} one of {theirs}: the operators "
                "of a run folder are of one model, relation and width; give the run folder of one lre-pl fit"
            )
    return {operator.layer: operator for operator in operators.values()}


def of_run(operator: LinearRelationOperator) -> str:
    """What every operator of one fit's run folder shares: its model, relation and width, in words."""
    return f"{operator.relation!r} on {operator.model} (d={operator.weight.shape[-1]})"
