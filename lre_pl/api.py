"""Python entry points: one call per experiment, built on the same Lightning pieces as the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger

from lre_pl.lightning.callbacks import SampleProgressBar
from lre_pl.lightning.datamodule import RelationDataModule
from lre_pl.lightning.module import Layer, LinearRelationModule
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
    The run folder (TensorBoard, operators, predictions) is under ``lightning_logs/``.

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
    pl.Trainer(**settings).fit(module, datamodule=data)
    return {layer: module.operator(layer) for layer in module.layers}
