"""One bundle as every bundle-level evaluation reads it: the shared context of the sweep's grid and of
every β-study question.

A :class:`BundleContext` holds the bundle, its evaluated samples and their dev/test split
(:class:`~lre_pl.protocol.splits.KnownSamples`: the sweep's, or a capped subset of them), the decoder,
the sweep's selection rule and, for an evaluation at one layer, that layer. Its helpers are the only
way an evaluation turns readouts into numbers: readouts go through :func:`relation_readout`, hits come
from one batched decode, and rows from :func:`~lre_pl.protocol.rows.make_row`, so that the sweep and
every question count faithfulness the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from lre_pl.evaluation.metrics import prefix_hits
from lre_pl.lm.models import LanguageModel
from lre_pl.lre.bundle import Bundle
from lre_pl.lre.estimators import Estimator, estimator_named
from lre_pl.lre.operator import relation_readout
from lre_pl.protocol.rows import make_row
from lre_pl.protocol.selection import SelectionRule
from lre_pl.protocol.splits import SPLITS, KnownSamples

Layer = int | str
Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class TopTokens:
    """The k best tokens of each decoded vector."""

    ids: torch.Tensor  # [N, k] token ids, best first (CPU)
    probabilities: torch.Tensor | None = None  # [N, k] their softmax probabilities over the vocabulary


class Decoder:
    """Top-k tokens of residual vectors through the LM's final norm and unembedding, in chunks.

    A sweep's grid and a fit's validation both decode and match through this class and
    :func:`~lre_pl.evaluation.metrics.prefix_hits`: faithfulness has one definition.
    """

    def __init__(self, lm: LanguageModel, top_k: int, chunk: int = 1024):
        self.lm, self.top_k, self.chunk = lm, top_k, chunk

    @functools.cached_property
    def vocabulary(self) -> list[str]:
        """Every token id's string (prefix matching compares these with objects)."""
        return self.lm.token_strings(list(range(self.lm.unembedding.weight.shape[0])))

    @torch.no_grad()
    def top_tokens(
        self, hidden: torch.Tensor, apply_norm: bool = True, probabilities: bool = False
    ) -> TopTokens:
        """The top-k tokens of hidden [N, d] (ranked by logit), and with ``probabilities`` their softmax.

        ``apply_norm=False`` decodes by the unembedding alone (``hidden`` is already after the final norm).
        """
        lm, ids, top_probabilities = self.lm, [], []
        for part in hidden.split(self.chunk):
            logits = lm.decode(part.to(lm.device, lm.dtype), apply_norm)  # [chunk, vocab]
            top = logits.topk(self.top_k).indices  # [chunk, k]
            ids.append(top.cpu())
            if probabilities:
                top_probabilities.append(logits.float().softmax(-1).gather(-1, top).cpu())
        return TopTokens(torch.cat(ids), torch.cat(top_probabilities) if probabilities else None)

    def token_strings(self, ids: torch.Tensor) -> list[list[str]]:
        """The strings of token ids [N, k]."""
        return [[self.vocabulary[t] for t in row] for row in ids.tolist()]

    def prefix_hits(self, ids: torch.Tensor, objects: Sequence[str]) -> torch.Tensor:
        """[N, k] bool for token ids [N, k]: the j-th token starts sample i's object."""
        return prefix_hits(self.token_strings(ids), objects).reshape(ids.shape)  # [0, k] for no sample

    def hits(self, hidden: torch.Tensor, objects: Sequence[str], apply_norm: bool = True) -> torch.Tensor:
        """[N, 2] bool for hidden [N, d]: the top-1 token starts the object; one of the top k does."""
        matches = self.prefix_hits(self.top_tokens(hidden, apply_norm).ids, objects)  # [N, k]
        return torch.stack([matches[:, 0], matches.any(1)], dim=1)


@dataclass(frozen=True, eq=False)
class BundleContext:
    """One bundle, its evaluated samples, the decoder and the sweep's rule (and a layer, where the
    evaluation reads one): what every bundle-level evaluation needs, and its shared helpers."""

    bundle: Bundle
    samples: KnownSamples
    """The evaluated test samples and their dev/test split."""
    decoder: Decoder
    rule: SelectionRule
    """The sweep's selection rule: its β grid, its layer-search β, its tie order."""
    layer: Layer | None = None
    """The layer an evaluation at one layer reads (the β study: the LRE's dev-chosen one); ``None`` for
    the sweep's grid, which chooses its own."""

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def known(self) -> torch.Tensor:
        """[k] indices of the evaluated samples into the bundle's test samples."""
        return self.samples.indices

    @property
    def splits(self) -> dict[str, torch.Tensor]:
        """split -> positions into :attr:`known`."""
        return self.samples.splits

    @property
    def objects(self) -> list[str]:
        return [self.bundle.test_objects[i] for i in self.known.tolist()]

    @property
    def faithfulness_metrics(self) -> tuple[str, str]:
        """The metrics of a faithfulness row: the top-1 hit and the top-k hit, k the decoder's."""
        return ("faithfulness@1", f"faithfulness@{self.decoder.top_k}")

    # ------------------------------------------------------------------------------------ rows
    def row(self, **fields) -> dict:
        """A row of this bundle (its model, relation, category and trial filled in)."""
        b = self.bundle
        return make_row(model=b.model, relation=b.relation, category=b.category, trial=b.seed, **fields)

    def split_rows(self, hits: torch.Tensor, metrics: Sequence[str], splits=SPLITS, **fields) -> list[dict]:
        """One row per split and metric of per-sample ``hits`` [known, len(metrics)] (NaN: empty split)."""
        rows = []
        for split in splits:
            positions = self.splits[split]
            for column, metric in enumerate(metrics):
                value = hits[positions, column].float().mean().item() if len(positions) else float("nan")
                rows.append(self.row(split=split, metric=metric, value=value, n=len(positions), **fields))
        return rows

    def means(self, hits: Mapping[Key, torch.Tensor], split: str) -> dict[Key, float]:
        """{key: faithfulness@1 on ``split``} of per-sample ``hits`` {key: [known, 2]} (NaN: empty split)."""
        return {key: value[self.splits[split], 0].float().mean().item() for key, value in hits.items()}

    # ---------------------------------------------------------------------------------- decoding
    def hits(self, readouts: Sequence[torch.Tensor], apply_norm: bool = True) -> list[torch.Tensor]:
        """Per readout [known, d] of the evaluated samples, its hits [known, 2], in one batched decode.

        Decoding is an evaluation's whole cost (a [rows, d] x [d, vocab] product): one call for all
        readouts keeps its matrix products wide (on a CPU, 1024 rows run at 1.6x the speed per row of 77).
        """
        if not readouts:  # a grid of one β: nothing beyond the layer search's β to decode
            return []
        hits = self.decoder.hits(torch.cat(list(readouts)), self.objects * len(readouts), apply_norm)
        return list(hits.reshape(len(readouts), len(self), 2))

    def _at(self, layer: Layer | None) -> Layer:
        if layer is None and self.layer is None:
            raise ValueError("no layer given, and this context reads none")
        return self.layer if layer is None else layer

    def projection(self, weight: torch.Tensor, layer: Layer | None = None) -> torch.Tensor:
        """[known, d] W s of the evaluated samples, s at ``layer`` (default: the context's)."""
        return self.bundle.test_states(self._at(layer))[self.known] @ weight.T

    def hits_at(self, estimator: Estimator, points: Sequence[tuple[Layer, float]]) -> dict:
        """{(layer, beta): hits [known, 2]} of one estimator at every point, in one batched decode."""
        order, readouts = [], []  # the points grouped by layer; per point [k, d]
        for layer in dict.fromkeys(layer for layer, _ in points):
            weight, bias = estimator(self.bundle.training_statistics(layer))
            projection = self.projection(weight, layer)  # [k, d] W s
            for beta in (beta for at, beta in points if at == layer):
                order.append((layer, beta))
                readouts.append(relation_readout(projection, bias, beta))
        return dict(zip(order, self.hits(readouts)))

    def scan(
        self, readouts: Callable[[float], torch.Tensor], apply_norm: bool = True, **fields
    ) -> list[dict]:
        """Faithfulness rows (``fields`` and ``beta`` set) of ``readouts(beta)`` [known, d] at every β the
        sweep's rule may choose (:attr:`SelectionRule.scan_betas`), in one batched decode."""
        betas = self.rule.scan_betas
        hits = self.hits([readouts(beta) for beta in betas], apply_norm)
        return [
            row
            for beta, beta_hits in zip(betas, hits)
            for row in self.split_rows(beta_hits, self.faithfulness_metrics, beta=beta, **fields)
        ]

    def faithfulness_by_beta(
        self, betas: Sequence[float], split: str, layer: Layer | None = None
    ) -> list[float]:
        """faithfulness@1 of the LRE at ``layer`` (default: the context's) on ``split``, per β (one decode)."""
        layer = self._at(layer)
        means = self.means(self.hits_at(estimator_named("lre"), [(layer, beta) for beta in betas]), split)
        return [means[layer, beta] for beta in betas]

    def test_faithfulness(self, beta: float, layer: Layer | None = None) -> float:
        """faithfulness@1 of the LRE at ``layer`` (default: the context's) and ``beta`` on the test split."""
        return self.faithfulness_by_beta([beta], "test", layer)[0]
