"""Checkpoints (``lre.ckpt``) as lre_pl reads them: no code runs, nothing is downloaded, nothing damaged
is read as numbers, and nothing in them overrides what the user set.

Lightning loads a checkpoint with ``torch.load``, whose unpickling may run code: with
``weights_only=False``, the default of Lightning's loader for ``http(s)`` URLs (which also keeps the
download in torch's hub cache). Every checkpoint lre_pl loads goes through :func:`read_checkpoint`:
a local path only (``file://`` as its path; any other ``scheme://`` is one line), the bytes read once
and checked whole (:func:`~lre_pl.files.zip_damage`), ``torch.load(weights_only=True)``, then the
fields of an lre_pl checkpoint checked (:class:`SavedEstimate`). The Trainer's own restore
(``ckpt_path`` of ``fit`` / ``validate``) reads through it once :class:`CheckpointGuard` (one of the
module's callbacks) has wrapped the strategy's ``checkpoint_io``; ``LinearRelationModule.load_from_checkpoint``
calls :func:`trusted_checkpoint`. The checkpoint's hyper-parameters are compared, never parsed
(:func:`disagreement`): ``lre-pl fit|validate --ckpt_path`` refuses one that differs from the config.
"""

from __future__ import annotations

import io
import math
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import CheckpointIO

from lre_pl.errors import InputError
from lre_pl.files import field_problem, load_weights_only
from lre_pl.lre.estimators import Estimator, estimator_of

#: ``scheme://`` at the start of a path: a URL (``https://``, ``s3://``, ``file://``, ...).
URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

#: What the advice of every refusal names.
FIT_CHECKPOINT = "the checkpoints/lre.ckpt of an lre-pl fit (lightning_logs/version_N/checkpoints/lre.ckpt)"

Layer = int | str

#: Why a fit takes no ``ckpt_path``: the CLI says it before anything loads, the module for a plain Trainer.
NOTHING_TO_RESUME = (
    "a checkpoint holds a finished fit (an estimate is one pass, so there is nothing to resume): "
    "evaluate it with validate and ckpt_path, or fit without ckpt_path"
)


@dataclass
class SavedEstimate:
    """The ``lre`` entry of an lre_pl checkpoint: W and b of every layer (plain tensors, not module
    state: see :class:`~lre_pl.lightning.module.LinearRelationModule`)."""

    layers: list[Layer]
    weights: torch.Tensor  # [layer, d, d]
    biases: torch.Tensor  # [layer, d]
    estimated: bool


#: The tensors of :class:`SavedEstimate` and the module's ``log_beta`` [layer] (one beta per layer).
CHECKPOINT_SHAPES = {
    "weights": (float, "layer", "d", "d"),
    "biases": (float, "layer", "d"),
    "log_beta": (float, "layer"),
}


def local_checkpoint(path: str | Path) -> Path:
    """The local file of ``ckpt_path``: a path, or a ``file://`` URL's path; any other URL is one line."""
    text = str(path)
    scheme = URL_SCHEME.match(text)
    if scheme is None:
        return Path(text)
    parts = urllib.parse.urlsplit(text)
    if scheme[1].lower() != "file" or parts.netloc not in ("", "localhost"):
        raise InputError(
            f"ckpt_path {text!r} is a remote address: lre_pl reads checkpoints from local files only (loading "
            "one from a URL can run code); download it yourself, then give its local path"
        )
    return Path(urllib.parse.unquote(parts.path))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The lre_pl checkpoint at ``path`` (local, see :func:`local_checkpoint`), read once, checked whole
    and loaded weights-only; any other file (missing, a folder, cut short, damaged, a pickle, not of
    lre_pl) is one line that never advises ``weights_only=False``."""
    local = local_checkpoint(path)
    if not local.exists():
        raise InputError(f"ckpt_path {str(path)!r} does not exist: give {FIT_CHECKPOINT}")
    try:  # read once: the bytes checked are the bytes loaded
        checkpoint, reason = load_weights_only(
            io.BytesIO(local.read_bytes()), refused=": not a weights-only lre_pl file"
        )
    except OSError as error:
        reason = error.strerror or str(error)
    if reason is None:
        reason = checkpoint_problem(checkpoint)
    if reason is not None:
        raise InputError(
            f"ckpt_path {str(path)!r} is not a readable lre_pl checkpoint ({reason}): give {FIT_CHECKPOINT}"
        )
    return checkpoint


def checkpoint_problem(checkpoint: Any) -> str | None:
    """What makes a weights-only loaded ``checkpoint`` not an lre_pl one, or ``None``."""
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("lre"), dict):
        return "no lre entry: not written by lre_pl"
    saved, state = checkpoint["lre"], checkpoint.get("state_dict")
    missing = [name for name in SavedEstimate.__dataclass_fields__ if name not in saved]
    if missing or not isinstance(state, dict) or "log_beta" not in state:
        return f"no {', '.join(missing or ['state_dict log_beta'])}"
    fields = {**saved, "log_beta": state["log_beta"]}
    return field_problem(fields, SavedEstimate, CHECKPOINT_SHAPES, {"layer": len(saved["layers"])})


def check_state_agrees(
    checkpoint: dict[str, Any], layers: list[Layer], beta: float, learn_beta: bool
) -> None:
    """One line unless the state in ``checkpoint`` is of the module's ``layers`` and, where β is not
    learned, of its ``beta``: loading it would replace them silently."""
    saved = checkpoint["lre"]["layers"]
    if saved != layers:
        raise InputError(f"the checkpoint holds layers {saved}, not model.layers={layers}")
    betas = checkpoint["state_dict"]["log_beta"].exp().tolist()  # [layer]
    if not learn_beta and any(not math.isclose(value, beta) for value in betas):
        learned = checkpoint.get("hyper_parameters", {}).get("learn_beta")
        raise InputError(
            f"the checkpoint holds beta {[round(value, 6) for value in betas]}, not model.beta={beta}: set "
            f"model.beta={betas[0]:.6g}" + (" or model.learn_beta=true" if learned else "")
        )


def trusted_checkpoint(path: str | Path) -> tuple[io.BytesIO, dict[str, Any]]:
    """For ``LinearRelationModule.load_from_checkpoint``: the checkpoint of :func:`read_checkpoint`, saved
    again to memory without the hyper-parameters that would import or build a class (its instantiator,
    its estimator), and those as the keyword arguments that replace them (the estimator resolved among
    lre_pl's own, nothing imported)."""
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.setdefault("hyper_parameters", {})
    hparams.pop("_instantiator", None)
    overrides = {"estimator": estimator_of(hparams.pop("estimator", None))}
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return buffer, overrides


def saved_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters as a checkpoint holds them: the estimator as its ``{class_path, init_args}``
    (what the CLI's config holds), so that the checkpoint loads weights-only however the module was made."""
    estimator = hparams.get("estimator")
    return {**hparams, "estimator": estimator.config} if isinstance(estimator, Estimator) else hparams


def comparable(name: str, value: Any) -> Any:
    """A hyper-parameter as :func:`disagreement` compares it: a layer as a list of layers, an estimator
    as its ``{class_path, init_args}`` under today's module path (0.1's ``lre_pl.estimators`` too)."""
    if hasattr(value, "as_dict"):  # a jsonargparse Namespace
        value = value.as_dict()
    if name == "layers" and not isinstance(value, list):
        return [value]
    if name == "estimator" and isinstance(value, dict):
        class_path = str(value.get("class_path")).replace("lre_pl.estimators.", "lre_pl.lre.estimators.")
        return {"class_path": class_path, "init_args": value.get("init_args") or {}}
    return value


def disagreement(saved: dict[str, Any], config: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first hyper-parameter whose value in a checkpoint (``saved``) differs from the run's config
    (YAML, flags and defaults), as ``(name, saved value, config value)``; ``None`` where all agree.
    Values are compared as data: nothing is imported or built."""
    for name, value in saved.items():
        if name.startswith("_"):  # Lightning's _instantiator and _class_path
            continue
        given = config.get(name, "(no such option)")
        if comparable(name, value) != comparable(name, given):
            return name, value, given
    return None


class VerifiedCheckpointIO(CheckpointIO):
    """The strategy's checkpoint IO with every load done by :func:`read_checkpoint` (weights-only, whatever
    the caller asks); saving and removing stay the wrapped IO's."""

    def __init__(self, checkpoint_io: CheckpointIO):
        self.checkpoint_io = checkpoint_io

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        self.checkpoint_io.save_checkpoint(checkpoint, path, storage_options=storage_options)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return read_checkpoint(path)

    def remove_checkpoint(self, path) -> None:
        self.checkpoint_io.remove_checkpoint(path)

    def teardown(self) -> None:
        self.checkpoint_io.teardown()


class CheckpointGuard(pl.Callback):
    """Makes the Trainer restore ``ckpt_path`` through :func:`read_checkpoint`: ``setup`` runs before the
    Trainer restores a checkpoint, so a plain ``pl.Trainer().validate(module, ckpt_path=...)`` is guarded."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(trainer.strategy.checkpoint_io, VerifiedCheckpointIO):
            trainer.strategy.checkpoint_io = VerifiedCheckpointIO(trainer.strategy.checkpoint_io)
