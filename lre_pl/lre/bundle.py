"""Estimation bundles: what one (model, relation, trial) estimation leaves for every later evaluation.

Estimation is the expensive part (a Jacobian pass over the training prompts, a forward over every
test prompt); evaluation (layer x beta x rank grids, baselines, causality) only reads bundles, so
every new question is an evaluation variant, never a new Jacobian pass. A bundle is written
atomically by the Lightning fit that estimates it (:class:`~lre_pl.lightning.module.LinearRelationModule` with
``bundle_path``): a file under its final name is complete, and damage done to it later (a copy cut
short, a bad disk) is found before it is read (:func:`~lre_pl.files.zip_damage`), and every field is
checked against its type and shape (:data:`BUNDLE_SHAPES`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

import lre_pl
from lre_pl.dataset.matching import is_prefix_match
from lre_pl.dataset.relations import Relation, RelationSample
from lre_pl.errors import InputError
from lre_pl.files import field_problem, load_weights_only, write_torch_atomically
from lre_pl.lm.activations import PromptStates
from lre_pl.lre.accumulation import TrainingSamples
from lre_pl.lre.estimators import TrainingStatistics
from lre_pl.lre.operator import LinearRelationOperator

Layer = int | str

#: The tensors of a bundle: their kind of numbers and shape (``layer``: its layers; ``state_layer``:
#: its state layers; ``n`` training and ``m`` test samples).
BUNDLE_SHAPES = {
    "weights": (float, "layer", "d", "d"),
    "biases": (float, "layer", "d"),
    "train_subject_states": (float, "n", "layer", "d"),
    "train_output_states": (float, "n", "d"),
    "train_biases": (float, "n", "layer", "d"),
    "train_jacobian_states": (float, "n", "layer", "d"),
    "train_object_tokens": (int, "n"),
    "test_subject_states": (float, "m", "state_layer", "d"),
    "test_output_states": (float, "m", "d"),
    "train_jacobians": (float, "n", "layer", "d", "d"),
}


@dataclass
class Bundle:
    """W and b of every estimated layer, per-sample training statistics and the test samples' states."""

    model: str
    relation: str
    category: str
    seed: int
    n_train: int
    layers: list[Layer]
    """Layers of ``weights`` and of the training tensors' layer axis."""
    state_layers: list[Layer]
    """Layers of the test states' layer axis: every layer of the model (``emb``, 0, 1, ...)."""
    weights: torch.Tensor  # [layer, d, d] W = mean_i J_i
    biases: torch.Tensor  # [layer, d] b = mean_i b_i
    train_subject_states: torch.Tensor  # [n, layer, d] s_i
    train_output_states: torch.Tensor  # [n, d] o_i
    train_biases: torch.Tensor  # [n, layer, d] b_i = o_i - J_i s_i
    train_jacobian_states: torch.Tensor  # [n, layer, d] J_i s_i
    train_object_tokens: torch.Tensor  # [n] first token of each training object
    test_subjects: list[str]
    test_objects: list[str]
    test_subject_states: torch.Tensor  # [m, state_layer, d] s of every test sample at every layer
    test_output_states: torch.Tensor  # [m, d] o of every test sample's own prompt
    test_lm_predictions: list[str]
    """The LM's own top-1 next token on each test prompt."""
    test_prompt_template: str
    """The few-shot test prompt: each subject goes in place of its last ``{}``."""
    train_jacobians: torch.Tensor | None = None  # [n, layer, d, d] J_i, only where asked (d^2 each)
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall seconds of global rank 0's estimation stages (``knowns``, ``jacobians``)."""
    version: str = lre_pl.__version__

    @classmethod
    def of_fit(
        cls,
        *,
        model: str,
        relation: Relation,
        seed: int,
        n_train: int,
        layers: Sequence[Layer],
        state_layers: Sequence[Layer],
        weights: torch.Tensor,
        biases: torch.Tensor,
        train: TrainingSamples | None,
        test_samples: Sequence[RelationSample],
        test_states: PromptStates,
        test_lm_predictions: Sequence[str],
        test_prompt_template: str,
        seconds: dict[str, float],
    ) -> Bundle:
        """The bundle of one fit: ``weights`` [layer, d, d] and ``biases`` [layer, d] of ``layers``,
        ``train`` the gathered training samples (``None``: the fit made no estimate, too few known test
        samples), and every test sample the fit kept with its states and the LM's own prediction."""
        train = train if train is not None else TrainingSamples.empty(len(layers), weights.shape[-1])
        return cls(
            model=model,
            relation=relation.name,
            category=relation.category,
            seed=seed,
            n_train=n_train,
            layers=list(layers),
            state_layers=list(state_layers),
            weights=weights.float(),
            biases=biases.float(),
            train_subject_states=train.subject_states,
            train_output_states=train.output_states,
            train_biases=train.biases,
            train_jacobian_states=train.jacobian_states,
            train_object_tokens=train.object_tokens,
            test_subjects=[sample.subject for sample in test_samples],
            test_objects=[sample.object for sample in test_samples],
            test_subject_states=test_states.subject_states.float(),
            test_output_states=test_states.output_states.float(),
            test_lm_predictions=list(test_lm_predictions),
            test_prompt_template=test_prompt_template,
            train_jacobians=train.jacobians,
            seconds=seconds,
        )

    @property
    def known(self) -> torch.Tensor:
        """[m] bool: the LM's own prediction starts the object (the paper's known samples)."""
        return torch.tensor(
            [is_prefix_match(p, o) for p, o in zip(self.test_lm_predictions, self.test_objects)],
            dtype=torch.bool,
        )

    def layer_index(self, layer: Layer) -> int:
        return self.layers.index(layer)

    def test_states(self, layer: Layer) -> torch.Tensor:
        """s of every test sample at ``layer`` [m, d]."""
        return self.test_subject_states[:, self.state_layers.index(layer)]

    def training_statistics(self, layer: Layer) -> TrainingStatistics:
        i = self.layer_index(layer)
        return TrainingStatistics(
            self.train_subject_states[:, i], self.train_output_states, self.weights[i], self.biases[i]
        )

    def operator(self, layer: Layer, beta: float) -> LinearRelationOperator:
        """The LRE of ``layer`` at ``beta`` as an operator (what ``lre-pl predict`` and the attribute lens
        apply); its test prompt is the bundle's, its training prompts are not kept in a bundle."""
        i = self.layer_index(layer)
        return LinearRelationOperator(
            weight=self.weights[i],
            bias=self.biases[i],
            beta=float(beta),
            layer=layer,
            relation=self.relation,
            model=self.model,
            n_train=self.n_train,
            seed=self.seed,
            test_prompt_template=self.test_prompt_template,
        )

    def save(self, path: str | Path) -> Path:
        """Write atomically: a crash never leaves a truncated bundle under the final name. Serialised in
        memory first, so that a full disk is an ``OSError`` that names the bundle's size (one line)."""
        payload = {
            key: value.detach().cpu().contiguous() if isinstance(value, torch.Tensor) else value
            for key, value in asdict(self).items()
        }
        write_torch_atomically(path, payload)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Bundle:
        """Read a bundle, checked whole first (:func:`~lre_pl.files.zip_damage`), then every field's type
        and shape; a one-line error where it is not."""
        path = Path(path)
        payload, reason = load_weights_only(path)
        if reason is None:
            try:
                fields_ = {f.name: payload[f.name] for f in fields(cls) if f.name in payload}
                reason = cls._field_problem(fields_)
                if reason is None:
                    return cls(**fields_)
            except Exception as error:
                reason = type(error).__name__
        raise InputError(
            f"{str(path)!r} is not a readable lre_pl bundle ({reason}): delete it and rerun the sweep, "
            "which estimates it again"
        )

    @classmethod
    def _field_problem(cls, payload: dict) -> str | None:
        sizes = {
            "layer": len(payload.get("layers", ())),
            "state_layer": len(payload.get("state_layers", ())),
            "m": len(payload.get("test_subjects", ())),
        }
        problem = field_problem(payload, cls, BUNDLE_SHAPES, sizes)
        lengths = {name: len(payload.get(name, ())) for name in ("test_objects", "test_lm_predictions")}
        unequal = next((name for name, length in lengths.items() if length != sizes["m"]), None)
        if problem is None and unequal:
            problem = f"{unequal} has {lengths[unequal]} entries for {sizes['m']} test subjects"
        return problem
