"""Python entry points: one call per experiment, and the LightningCLI behind ``lre-pl fit`` and
``lre-pl validate``, built on the same Lightning pieces and Trainer defaults."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger

from lre_pl.class_paths import allow_only_known_class_paths
from lre_pl.errors import InputError
from lre_pl.evaluation.lens import LensView
from lre_pl.evaluation.lens import attribute_lens as lens_of_text
from lre_pl.experiments.attribute_lens.operators import lens_operators
from lre_pl.lightning.callbacks import SampleProgressBar
from lre_pl.lightning.checkpoints import NOTHING_TO_RESUME, disagreement, local_checkpoint, read_checkpoint
from lre_pl.lightning.datamodule import RelationDataModule
from lre_pl.lightning.module import Layer, LinearRelationModule
from lre_pl.lm.models import LanguageModel, load_language_model
from lre_pl.lre.operator import LinearRelationOperator

#: Estimation is one pass with no optimizer step: one epoch, no sanity check, no ModelCheckpoint
#: (it never saves at global_step 0; the module saves its operator and checkpoint itself).
ESTIMATION_TRAINER_DEFAULTS = {
    "max_epochs": 1,
    "num_sanity_val_steps": 0,
    "enable_checkpointing": False,
    "log_every_n_steps": 1,
    "devices": 1,
    "enable_model_summary": False,  # the frozen LM is not a submodule: the table would say "1 parameter"
}

#: ``lre-pl fit`` / ``validate``: the estimation defaults, logged where :func:`estimate` logs.
CLI_TRAINER_DEFAULTS = {
    **ESTIMATION_TRAINER_DEFAULTS,
    "logger": {
        "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
        "init_args": {"save_dir": ".", "name": "lightning_logs", "default_hp_metric": False},
    },
}


def estimate(
    relation: str,
    model: str = "smollm2-135m",
    layers: Sequence[Layer] = (8,),
    beta: float = 1.0,
    n_train: int = 5,
    seed: int = 0,
    trainer: dict[str, Any] | None = None,
    **data_options: Any,
) -> dict[Layer, LinearRelationOperator]:
    """Estimate LREs of ``relation`` at every layer of ``layers`` in one pass; validate; return them.

    ``trainer`` overrides Trainer arguments (e.g. ``{"strategy": "ddp", "devices": 2}``);
    ``data_options`` go to :class:`RelationDataModule` (``min_known``, ``filter_known``, ...).
    The run folder (TensorBoard, operators, predictions) is under ``lightning_logs/``; a run that
    fails leaves no folder behind.

    >>> operators = estimate("country capital city", layers=["emb", *range(30)])  # a layer sweep
    >>> operators[18].predict("France")  # [(' Paris', 0.93), ...]
    """
    pl.seed_everything(seed, verbose=False)
    module = LinearRelationModule(model=model, layers=list(layers), beta=beta)
    data = RelationDataModule(relation=relation, model=model, n_train=n_train, seed=seed, **data_options)
    settings = {
        **ESTIMATION_TRAINER_DEFAULTS,
        "logger": TensorBoardLogger(".", name="lightning_logs", default_hp_metric=False),
        "callbacks": [SampleProgressBar()],
        **(trainer or {}),
    }
    pl.Trainer(**settings).fit(module, datamodule=data)  # a failed fit leaves no folder (FailedRunCleanup)
    return {layer: module.operator(layer) for layer in module.layers}


class LRECLI(LightningCLI):
    """``lre-pl fit`` and ``lre-pl validate`` (the module has no test or predict loop: ``lre-pl
    predict`` applies a saved operator without a Trainer)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: LightningCLI.subcommands()[name] for name in ("fit", "validate")}

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.model", "data.model")
        parser.link_arguments("model.dtype", "data.dtype")

    def instantiate_trainer(self, **kwargs):
        """The trainer, with the per-sample progress bar unless the config disables or replaces it."""
        config = self._get(self.config_init, "trainer", default={})
        callbacks = list(config.get("callbacks") or [])
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            kwargs["callbacks"] = [*callbacks, SampleProgressBar()]
        return super().instantiate_trainer(**kwargs)

    def _parse_ckpt_path(self) -> None:
        """Lightning's parses the checkpoint's hyper-parameters into the config: they would override the
        command line, and their ``class_path`` be imported. Here the checkpoint is read weights-only
        (:func:`~lre_pl.lightning.checkpoints.read_checkpoint`) and its hyper-parameters only compared
        with the config (YAML, flags and defaults): any difference is one line, before anything loads."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path:
            return
        if subcommand == "fit":
            local_checkpoint(path)  # a URL: that line first
            raise InputError(NOTHING_TO_RESUME)
        saved = read_checkpoint(path).get("hyper_parameters") or {}
        found = disagreement(saved, self.config[subcommand]["model"].as_dict())
        if found is not None:
            name, value, given = found
            flag = value if isinstance(value, str) else json.dumps(value)
            run_config = local_checkpoint(path).parent.parent / "config.yaml"
            config = run_config if run_config.is_file() else "<run>/config.yaml"
            raise InputError(
                f"--ckpt_path {path} was estimated with model.{name}={value}, not {given}: give "
                f"--model.{name} {shlex.quote(flag)} (or --config {config}), or another checkpoint"
            )

    def _check_before_running(self) -> None:
        # Cheap cross-checks (model, dtype, the operator's relation) before the run loads anything.
        self.model.check_datamodule(self.datamodule)

    before_fit = before_validate = _check_before_running


def lightning_cli(args: list[str]) -> LRECLI:
    """Run ``lre-pl fit|validate ARGS`` (``args`` starts with the subcommand)."""
    allow_only_known_class_paths()
    return LRECLI(
        LinearRelationModule,
        RelationDataModule,
        trainer_defaults=CLI_TRAINER_DEFAULTS,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "lre-pl", "exit_on_error": False},
        args=args,
    )


def attribute_lens(
    operators: str | Path | Mapping[Layer, LinearRelationOperator],
    text: str,
    lm: LanguageModel | None = None,
    *,
    relation: str | None = None,
    trial: int | None = None,
    k: int = 3,
    positions: str = "all",
    subject: str | None = None,
    layers: Sequence[Layer] | None = None,
) -> LensView:
    """The attribute lens of ``text`` (Hernandez et al., §5): at every layer that has an operator and
    every token, the top-``k`` objects of decode(β W h + b), with the logit lens beside it.

    ``operators``: a fit's run folder (``lightning_logs/version_N``), an ``operator.pt``, a sweep folder
    with ``relation`` and ``trial`` (default 0; every layer at the sweep's dev-chosen β), or
    ``{layer: operator}``. ``lm``: the model they were estimated on (``None``: loaded from their model
    spec).

    >>> view = attribute_lens("lightning_logs/version_0", "Rome is lovely. The capital city of France is")
    >>> print(view.table()); view.figure().savefig("lens.png")
    """
    if isinstance(operators, (str, Path)):
        operators = lens_operators(operators, relation, trial)
    if lm is None:
        lm = load_language_model(next(iter(operators.values())).model)
    return lens_of_text(operators, text, lm, k=k, positions=positions, subject=subject, layers=layers)
