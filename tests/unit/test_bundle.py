"""A fit's bundle, built from what the fit holds: its fields, and the empty training part of a skipped estimate."""

import torch

from lre_pl.dataset.relations import RelationSample, load_relation
from lre_pl.lm.activations import PromptStates
from lre_pl.lre.accumulation import TrainingSamples
from lre_pl.lre.bundle import Bundle

LAYERS, STATE_LAYERS, D = [1, "emb"], ["emb", 0, 1, 2], 4


def _bundle(train: TrainingSamples | None) -> Bundle:
    generator = torch.Generator().manual_seed(0)
    states = PromptStates(
        torch.randn(3, len(STATE_LAYERS), D, generator=generator, dtype=torch.float64),  # [m, state_layer, d]
        torch.randn(3, D, generator=generator),  # [m, d]
        torch.tensor([5, 6, 7]),
    )
    samples = [
        RelationSample("France", "Paris"),
        RelationSample("Spain", "Madrid"),
        RelationSample("Peru", "Lima"),
    ]
    return Bundle.of_fit(
        model="m", relation=load_relation("country capital city"), seed=3, n_train=2, layers=LAYERS,
        state_layers=STATE_LAYERS, weights=torch.ones(2, D, D, dtype=torch.float64), biases=torch.zeros(2, D),
        train=train, test_samples=samples, test_states=states, test_lm_predictions=[" Par", " x", " Li"],
        test_prompt_template="{} has the capital", seconds={"knowns": 1.0, "jacobians": 2.0},
    )  # fmt: skip


def test_a_fit_bundle_holds_the_fit_its_training_samples_and_its_test_samples():
    train = TrainingSamples(
        subject_states=torch.randn(2, 2, D),
        output_states=torch.randn(2, D),
        object_tokens=torch.tensor([9, 8]),
        biases=torch.randn(2, 2, D),
        jacobian_states=torch.randn(2, 2, D),
    )
    bundle = _bundle(train)
    assert (bundle.model, bundle.relation, bundle.category, bundle.seed, bundle.n_train) == (
        "m", "country capital city", "factual", 3, 2,
    )  # fmt: skip
    assert bundle.layers == LAYERS and bundle.state_layers == STATE_LAYERS
    assert bundle.weights.dtype == bundle.test_subject_states.dtype == torch.float32
    assert bundle.train_subject_states is train.subject_states and bundle.train_biases is train.biases
    assert bundle.train_object_tokens.tolist() == [9, 8] and bundle.train_jacobians is None
    assert bundle.test_subjects == ["France", "Spain", "Peru"] and bundle.test_objects == [
        "Paris",
        "Madrid",
        "Lima",
    ]
    assert bundle.known.tolist() == [True, False, True] and bundle.test_states(1).shape == (3, D)
    assert bundle.seconds == {"knowns": 1.0, "jacobians": 2.0}


def test_a_fit_that_made_no_estimate_has_zero_training_rows():
    bundle = _bundle(None)
    assert bundle.train_subject_states.shape == bundle.train_biases.shape == (0, 2, D)
    assert bundle.train_output_states.shape == (0, D) and bundle.train_object_tokens.shape == (0,)
    assert bundle.test_output_states.shape == (3, D)
