"""What the β study's questions read: one bundle at the LRE's dev-chosen layer (:class:`StudyContext`),
and a sweep's evaluated bundles together (:class:`SweepStudy`, for the cross-bundle questions)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lre_pl.dataset.relations import Relation, load_relation
from lre_pl.evaluation.context import BundleContext, Decoder
from lre_pl.evaluation.grid import EvaluationGrid
from lre_pl.lightning.datamodule import RelationPrompts
from lre_pl.lm.jacobian import compute_jacobians
from lre_pl.lre.bundle import Bundle
from lre_pl.protocol.folder import SweepFolder

Layer = int | str
BundleKey = tuple[str, int]  # (relation, trial)


@dataclass(frozen=True)
class StudySettings:
    """What a study's rows depend on besides its sweep: kept beside them (``study_settings.json``), and
    a study folder refuses rows made with other settings. (Documented field by field on
    :class:`~lre_pl.experiments.beta_study.study.BetaStudyConfig`, which sets them.)"""

    max_known: int | None = 50
    fit_epochs: int = 10
    quadrature_nodes: int = 8
    shots: tuple[int, ...] = (1, 2, 5, 8)

    def as_json(self) -> dict:
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()
        }


@dataclass(frozen=True, eq=False)
class StudyContext(BundleContext):
    """A bundle's evaluation context at the LRE's dev-chosen layer, with what several questions need
    and is costly to make: the training prompts and each training sample's J_i, made once per bundle."""

    settings: StudySettings = field(default_factory=StudySettings)
    """The study's settings (a question's own parameters, such as the chord's quadrature nodes)."""
    find_relation: Callable[[str], Relation] = load_relation
    """A relation by its name, as the bundle's sweep estimated it (:meth:`SweepFolder.relation`)."""

    @classmethod
    def of(
        cls,
        bundle: Bundle,
        grid: EvaluationGrid,
        decoder: Decoder,
        layer: Layer,
        settings: StudySettings | None = None,
        find_relation: Callable[[str], Relation] = load_relation,
    ) -> StudyContext:
        """The sweep's known samples and split of ``bundle``, at most ``settings.max_known`` of them (a
        seeded subset of the sweep's own dev and test splits, so no study test sample chose the sweep's
        layer and β; ``settings=None``: every known sample), read at ``layer``."""
        samples = grid.known_samples(bundle)
        if settings is not None and settings.max_known is not None:
            samples = samples.capped(settings.max_known, bundle.seed)
        return cls(
            bundle,
            samples,
            decoder,
            grid.selection_rule,
            layer,
            settings or StudySettings(max_known=None),
            find_relation,
        )

    def projection_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W s [k, d], b [d]) of the LRE at the study's layer, s of the evaluated samples."""
        i = self.bundle.layer_index(self.layer)
        return self.projection(self.bundle.weights[i]), self.bundle.biases[i]

    @functools.cached_property
    def relation(self) -> Relation:
        """The bundle's relation (its templates and samples)."""
        return self.find_relation(self.bundle.relation)

    @functools.cached_property
    def train_prompts(self) -> list:
        """The training items of the bundle's trial (rebuilt: the split is seeded)."""
        b = self.bundle
        return RelationPrompts.build(self.relation, self.decoder.lm, b.n_train, b.seed).train

    @functools.cached_property
    def jacobians(self) -> torch.Tensor:
        """J_i [n, d, d] of the training samples at the study's layer (one engine pass, then checked).

        The bundle keeps only J_i s_i (J_i are d² each), so they are computed again for this one
        layer and checked against the bundle's J_i s_i.
        """
        b, lm = self.bundle, self.decoder.lm
        result = compute_jacobians(lm, [item.prompt for item in self.train_prompts], [self.layer])
        jacobians = result.jacobians[self.layer].detach().float().cpu()
        i = b.layer_index(self.layer)
        stored = b.train_jacobian_states[:, i]  # J_i s_i of the estimation: the same prompts, the same J_i
        s = b.train_subject_states[:, i]
        recomputed = torch.einsum("nij,nj->ni", jacobians, s)
        # Float32 products carry an error of about eps * ‖J_i‖ ‖s_i‖, whatever the size of J_i s_i.
        scale = (jacobians.flatten(1).norm(dim=-1) * s.norm(dim=-1)).max().item()
        if (recomputed - stored).abs().max().item() > 1e-4 * scale:
            raise RuntimeError(
                f"J_i of {b.relation!r} at layer {self.layer} differ from its bundle's J_i s_i"
            )
        return jacobians


@dataclass(frozen=True)
class SweepStudy:
    """A sweep's evaluated bundles as the β study reads them, and the study's settings."""

    sweep: SweepFolder
    grid: EvaluationGrid
    decoder: Decoder
    points: Mapping[BundleKey, tuple[Layer, float]]
    """(relation, trial) -> the LRE's (layer, β) chosen on the bundle's dev split by the sweep."""
    model: str
    """The sweep's model spec (a learned-β fit loads it)."""
    log_dir: Path
    """Where the learned-β fits log (TensorBoard)."""
    settings: StudySettings = field(default_factory=StudySettings)

    @property
    def keys(self) -> list[BundleKey]:
        """Every evaluated bundle, in the study's order."""
        return sorted(self.points, key=str)

    def context(self, relation: str, trial: int) -> StudyContext:
        """The bundle's context at its dev-chosen layer (the bundle is loaded on each call)."""
        bundle = Bundle.load(self.sweep.bundle(relation, trial))
        return StudyContext.of(
            bundle,
            self.grid,
            self.decoder,
            self.points[relation, trial][0],
            self.settings,
            self.sweep.relation,
        )

    def usable(self, keys: Iterable[BundleKey]) -> dict[BundleKey, StudyContext]:
        """{key: context} of the bundles among ``keys`` with at least the grid's ``min_known`` samples."""
        contexts = {key: self.context(*key) for key in keys}
        return {key: context for key, context in contexts.items() if len(context) >= self.grid.min_known}
