"""Evaluation of an estimation bundle: faithfulness grids, baselines and causality, as tidy rows.

Everything here reads a :class:`~lre_pl.lre.bundle.Bundle`; no Jacobian is ever recomputed. Decoding
(final norm + unembedding) is the only model work of the faithfulness grids; causality re-runs the
suffix of the known test prompts with the edits (:mod:`lre_pl.evaluation.causality`).

Protocol (the paper's, with a held-out choice added):

- The known test samples of a trial are split, seeded, into a *dev* part (``dev_fraction``) and a
  *test* part. Hyper-parameters are chosen on dev and reported on test (``selection="dev"``); the
  paper chose them on the samples it reported, which is reported too (``selection="paper"``: chosen
  and reported on all known samples).
- Layer and beta are chosen one after the other: the layer at ``layer_search_beta``, then beta on
  ``betas`` at that layer. A full layer x beta product costs |layers| x |betas| decodes of every
  sample (on SmolLM2, ~5 TFLOP a relation); the two scans cost |layers| + |betas|.
- Every estimator gets its layer chosen the same way; only the LRE scans beta (``takes_beta``).
  ``lre_emb`` is the LRE held at the embedding layer (a baseline of the paper).
- ``max_known`` caps the known samples of a relation at a seeded random subset (a coarser, cheaper
  evaluation of the largest relations; the count row still says how many were known).
- Causality: at the chosen layer(s), the paper's edit at every rank of ``ranks`` (rank chosen on
  dev), and the comparison edits, over seeded random targets among the known samples
  (``edit_targets="known"``) or, wider than the paper and labelled by its metric, among every test
  sample of the relation (``"relation"``). Where no source has a target, a count row says why
  (:data:`~lre_pl.protocol.rows.MISSING_REASONS`).

Rows are dicts with the fields of :data:`ROW_FIELDS`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lre_pl.evaluation.causality import (
    EDIT_TARGETS,
    comparison_edits,
    edit_hits,
    edit_set,
    no_target_reason,
    pinv_edits,
    random_targets,
    target_pool,
)
from lre_pl.evaluation.context import BundleContext, Decoder
from lre_pl.lm.models import LanguageModel
from lre_pl.lre.bundle import Bundle
from lre_pl.lre.estimators import Estimator
from lre_pl.protocol.selection import SELECTIONS, SelectionRule
from lre_pl.protocol.splits import KnownSamples

Layer = int | str


@dataclass(frozen=True)
class EvaluationGrid:
    """What to evaluate on each bundle (the sweep config's evaluation fields)."""

    estimators: Sequence[Estimator]
    betas: Sequence[float]
    layer_search_beta: float = 1.0
    ranks: Sequence[int] = ()
    comparison_edits: bool = True
    dev_fraction: float = 0.5
    min_known: int = 4
    max_known: int | None = None
    known_only: bool = True
    top_k: int = 3
    batch_size: int = 16
    edit_targets: str = "known"

    @property
    def selection_rule(self) -> SelectionRule:
        """How the LRE's layer, β and rank are chosen from this grid's scores."""
        return SelectionRule(self.betas, self.layer_search_beta, self.ranks)

    def known_samples(self, bundle: Bundle) -> KnownSamples:
        """The samples of ``bundle`` this grid evaluates (known only, or all; capped) and their split."""
        evaluated = (
            bundle.known if self.known_only else torch.ones(len(bundle.test_objects), dtype=torch.bool)
        )
        return KnownSamples.of(evaluated, self.dev_fraction, bundle.seed, self.max_known)


class BundleEvaluation:
    """Evaluates one bundle through its :class:`~lre_pl.evaluation.context.BundleContext` (the grid's
    known samples and split); :meth:`rows` runs everything and returns the tidy rows."""

    def __init__(self, bundle: Bundle, grid: EvaluationGrid, decoder: Decoder):
        self.bundle, self.grid, self.decoder = bundle, grid, decoder
        self.context = BundleContext(bundle, grid.known_samples(bundle), decoder, grid.selection_rule)
        self._rows: list[dict] = []

    def rows(self, lm: LanguageModel | None = None) -> list[dict]:
        """All rows of this bundle; ``lm`` (for causality) may be ``None`` to skip causality."""
        b, grid, context = self.bundle, self.grid, self.context
        n_test = len(b.test_objects)
        n_known = float(b.known.sum()) if grid.known_only else float(n_test)
        self._rows.append(
            context.row(kind="count", split="all", metric="known_test_samples", value=n_known, n=n_test)
        )
        self._rows.append(
            context.row(
                kind="count", split="all", metric="lm_accuracy", value=b.known.float().mean().item(), n=n_test
            )
        )
        if len(context) < grid.min_known:
            self._rows.append(
                context.row(kind="count", split="all", metric="too_few_known", value=1.0, n=len(context))
            )
            return self._rows
        started = time.perf_counter()
        chosen_lre = {}
        for estimator in grid.estimators:
            chosen = self._faithfulness(estimator)
            if estimator.takes_beta:
                chosen_lre = chosen
        seconds = {**b.seconds, "grid": time.perf_counter() - started}
        started = time.perf_counter()
        if lm is not None and chosen_lre and (grid.ranks or grid.comparison_edits):
            self._causality(lm, chosen_lre)
            seconds["causality"] = time.perf_counter() - started
        for stage, value in seconds.items():
            self._rows.append(
                context.row(
                    kind="timing", split="all", metric=f"seconds_{stage}", value=value, n=len(context)
                )
            )
        return self._rows

    # ------------------------------------------------------------------------------ faithfulness
    def _faithfulness(self, estimator: Estimator) -> dict[str, tuple[Layer, float]]:
        """Grid rows of one estimator and its selected rows; returns the chosen (layer, beta) per selection."""
        b, name, context = self.bundle, estimator.name, self.context
        # Only the LRE scans β; every other estimator is read at β = 1 and chooses its layer alone.
        rule = self.grid.selection_rule if estimator.takes_beta else SelectionRule([1.0])
        search_beta = rule.layer_search_beta
        scores = context.hits_at(estimator, [(layer, search_beta) for layer in b.layers])
        chosen_layers = {
            selection: rule.layer(
                {layer: value for (layer, _), value in context.means(scores, chosen_on).items()}, b.layers
            )
            for selection, (chosen_on, _) in SELECTIONS.items()
        }
        variants = {name: None}  # variant -> its fixed layer (None: the chosen one)
        if estimator.takes_beta:
            scan_layers = sorted(set(chosen_layers.values()) | ({"emb"} & set(b.layers)), key=str)
            betas = [beta for beta in rule.betas if beta != search_beta]
            scores.update(
                context.hits_at(estimator, [(layer, beta) for layer in scan_layers for beta in betas])
            )
            if "emb" in b.layers:
                variants[f"{name}_emb"] = "emb"
        for (layer, beta), hits in scores.items():
            self._rows += context.split_rows(
                hits, context.faithfulness_metrics, kind="grid", estimator=name, layer=str(layer), beta=beta
            )
        chosen = {}
        for variant, fixed_layer in variants.items():
            for selection, (chosen_on, report) in SELECTIONS.items():
                layer = chosen_layers[selection] if fixed_layer is None else fixed_layer
                at_layer = {beta: hits for (at, beta), hits in scores.items() if at == layer}
                beta = rule.beta(context.means(at_layer, chosen_on))
                if fixed_layer is None:
                    chosen[selection] = (layer, beta)
                self._rows += context.split_rows(
                    at_layer[beta], context.faithfulness_metrics, splits=(report,), kind="selected",
                    selection=selection, estimator=variant, layer=str(layer), beta=beta,
                )  # fmt: skip
        return chosen

    # --------------------------------------------------------------------------------- causality
    def _causality(self, lm: LanguageModel, chosen: dict[str, tuple[Layer, float]]) -> None:
        b, grid, context = self.bundle, self.grid, self.context
        pool, sources_in_pool = target_pool(grid.edit_targets, context.known, len(b.test_objects))
        edits = edit_set(lm, b, pool)
        pairs = random_targets(edits.subjects, edits.objects, b.seed, sources_in_pool.tolist())
        if not pairs:
            reason = no_target_reason(edits.objects, grid.edit_targets)
            self._rows.append(context.row(kind="count", split="all", metric=reason, value=1.0, n=len(pool)))
            return
        metric = EDIT_TARGETS[grid.edit_targets]
        sources = torch.tensor([source for source, _ in pairs])
        # Pairs per split: those whose source sample (a known one) is in the split.
        in_split = {
            split: torch.isin(sources, sources_in_pool[positions])
            for split, positions in context.splits.items()
        }
        edit_fns = {}
        for layer in dict.fromkeys(layer for layer, _ in chosen.values()):
            weight = b.weights[b.layer_index(layer)].to(lm.device)
            edit_fns[layer] = {
                ("lre", rank): fn for rank, fn in pinv_edits(edits, weight, grid.ranks).items()
            }
            if grid.comparison_edits:
                kinds = comparison_edits(lm, edits, layer)
                edit_fns[layer].update({(f"edit:{kind}", None): fn for kind, fn in kinds.items()})
        hits_by_layer = edit_hits(lm, edits, pairs, edit_fns, grid.batch_size)  # {layer: {key: [pair]}}
        for layer, hits in hits_by_layer.items():
            for (estimator, rank), pair_hits in hits.items():
                for split, mask in in_split.items():
                    value = pair_hits[mask].float().mean().item() if mask.any() else float("nan")
                    self._rows.append(context.row(
                        kind="grid", estimator=estimator, layer=str(layer), rank=rank, split=split,
                        metric=metric, value=value, n=int(mask.sum()),
                    ))  # fmt: skip
            for selection, (chosen_on, report) in SELECTIONS.items():
                if chosen[selection][0] != layer:
                    continue
                # The rank is the LRE's hyper-parameter; comparison edits have none of their own.
                rates = {
                    rank: hits["lre", rank][in_split[chosen_on]].float().mean().item() for rank in grid.ranks
                }
                best_rank = grid.selection_rule.rank(rates)
                for key, pair_hits in hits.items():
                    if key[0] == "lre" and key[1] != best_rank:
                        continue
                    mask = in_split[report]
                    self._rows.append(context.row(
                        kind="selected", selection=selection, estimator=key[0], layer=str(layer), rank=key[1],
                        split=report, metric=metric, value=pair_hits[mask].float().mean().item(),
                        n=int(mask.sum()),
                    ))  # fmt: skip
