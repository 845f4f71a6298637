"""Can β be one global constant? A LightningModule that learns β shared across relations, from bundles.

The samples are (W s, b, the object's first token) at each relation's LRE layer (chosen on its dev
split by the protocol), taken from the bundles: either the relation's dev-split known test samples
(``source="dev"``: samples the LRE was **not** estimated from) or its training samples
(``source="train"``: W s_i + b sits close to o_i there, which pulls a fit toward β = 1; both are
fitted so that the pull is visible). β is log-parametrised and shared by every sample of a group:
one group (``groups="global"``), one per category or one per relation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lre_pl.dataset.prompts import fill_subject
from lre_pl.lightning.datamodule import object_token_id
from lre_pl.lm.models import LanguageModel, load_language_model
from lre_pl.lre.bundle import Bundle
from lre_pl.lre.operator import relation_readout

Layer = int | str

GROUPINGS = ("global", "category", "relation")
SOURCES = ("dev", "train")


@dataclass
class BetaSamples:
    """Readout inputs of many relations' samples, each with the index of its β group."""

    projections: torch.Tensor  # [N, d] W s (unscaled)
    biases: torch.Tensor  # [N, d] b of the sample's relation
    targets: torch.Tensor  # [N] first token of the object
    groups: torch.Tensor  # [N] index into the learned betas
    group_names: list[str]

    def dataset(self) -> TensorDataset:
        return TensorDataset(self.projections, self.biases, self.targets, self.groups)


def relation_samples(
    bundle: Bundle, layer: Layer, tokenizer, source: str, known: torch.Tensor, splits: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W s [n, d], b [n, d], targets [n]) of one bundle's ``source`` samples at ``layer``.

    ``known`` [k]: the bundle's evaluated test samples; ``splits``: positions into them (the protocol's).
    """
    i = bundle.layer_index(layer)
    weight, bias = bundle.weights[i], bundle.biases[i]
    if source == "train":
        states, targets = bundle.train_subject_states[:, i], bundle.train_object_tokens
    elif source == "dev":
        chosen = known[splits["dev"]].tolist()
        states = bundle.test_states(layer)[chosen]
        targets = torch.tensor([
            object_token_id(tokenizer, fill_subject(bundle.test_prompt_template, bundle.test_subjects[j]).text,
                            bundle.test_objects[j])
            for j in chosen
        ], dtype=torch.long)  # fmt: skip
    else:
        raise ValueError(f"source={source!r}: use one of {SOURCES}")
    return states @ weight.T, bias.expand(len(states), -1), targets


def group_of(bundle: Bundle, grouping: str) -> str:
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping={grouping!r}: use one of {GROUPINGS}")
    return {"global": "all", "category": bundle.category, "relation": bundle.relation}[grouping]


class GlobalBetaModule(pl.LightningModule):
    """Learns log β per group by Lightning's optimizer loop; the LM is frozen and never a submodule.

    Hooks: ``setup`` (the LM, loaded once per process), ``training_step`` (cross-entropy of
    decode(β_g W s + b) against the object's first token; logs ``train/loss`` and ``beta/<group>``),
    ``configure_optimizers`` (Adam on log β). Under DDP the batches are split across processes and
    the gradients of log β averaged by Lightning.
    """

    def __init__(
        self,
        model: str,
        group_names: Sequence[str] = ("all",),
        dtype: str = "float32",
        initial_beta: float = 1.0,
        lr: float = 0.05,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.log_beta = nn.Parameter(torch.full((len(group_names),), math.log(initial_beta)))
        self._lm: list[LanguageModel] = []  # a list: a LanguageModel attribute is never a submodule

    @property
    def lm(self) -> LanguageModel:
        if not self._lm:
            self._lm.append(load_language_model(self.hparams.model, self.hparams.dtype, str(self.device)))
        return self._lm[0]

    @property
    def betas(self) -> dict[str, float]:
        return dict(zip(self.hparams.group_names, self.log_beta.detach().exp().tolist()))

    def setup(self, stage: str) -> None:
        self.lm  # noqa: B018  (loaded before the first step)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        projections, biases, targets, groups = batch  # [b, d], [b, d], [b], [b]
        beta = self.log_beta.exp()[groups][:, None]  # [b, 1]
        logits = self.lm.decode(relation_readout(projections, biases, beta))  # [b, vocab]
        loss = F.cross_entropy(logits, targets)
        self.log("train/loss", loss, prog_bar=False, on_epoch=True, on_step=False)
        for name, value in self.betas.items():
            self.log(f"beta/{name}", value, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam([self.log_beta], lr=self.hparams.lr)


def fit_betas(
    model: str,
    samples: BetaSamples,
    epochs: int = 30,
    batch_size: int = 64,
    seed: int = 0,
    logger=False,
    trainer: dict | None = None,
) -> dict[str, float]:
    """{group: learned β}: ``trainer.fit`` of :class:`GlobalBetaModule` on ``samples``."""
    pl.seed_everything(seed, verbose=False)
    module = GlobalBetaModule(model, samples.group_names)
    loader = DataLoader(samples.dataset(), batch_size=batch_size, shuffle=True)
    settings = dict(max_epochs=epochs, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, log_every_n_steps=1)  # fmt: skip
    pl.Trainer(**{**settings, **(trainer or {})}).fit(module, loader)
    return module.betas


def collect_samples(
    bundles: Sequence[tuple[Bundle, Layer, torch.Tensor, dict]], tokenizer, source: str, grouping: str
) -> BetaSamples:
    """:class:`BetaSamples` of ``(bundle, layer, known, splits)`` items (see :func:`relation_samples`)."""
    names = sorted({group_of(bundle, grouping) for bundle, *_ in bundles})
    parts = []
    for bundle, layer, known, splits in bundles:
        projections, biases, targets = relation_samples(bundle, layer, tokenizer, source, known, splits)
        groups = torch.full((len(targets),), names.index(group_of(bundle, grouping)), dtype=torch.long)
        parts.append((projections, biases, targets, groups))
    return BetaSamples(*(torch.cat(column) for column in zip(*parts)), names)
