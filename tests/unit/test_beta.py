import math

import torch

from lre_pl.lre.beta import learn_beta


def test_learned_beta_moves_to_the_known_optimum():
    """decode = identity logits; W s points at the target, b at a decoy: a larger beta is better,
    and the cross-entropy at the learned beta is lower than at beta = 1."""
    torch.manual_seed(0)
    vocab, samples = 6, 4
    targets = torch.arange(samples)
    projections = 0.5 * torch.nn.functional.one_hot(targets, vocab).float()  # [sample, vocab]
    bias = torch.zeros(vocab)
    bias[5] = 1.0  # every sample's decoy
    trajectory = learn_beta(
        projections, bias, targets, decode=lambda z: z, initial_beta=1.0, steps=200, lr=0.05
    )
    assert trajectory.losses[-1] < trajectory.losses[0] - 0.5
    assert trajectory.betas[-1] > 4 and all(b > 0 for b in trajectory.betas)
    assert len(trajectory.betas) == len(trajectory.losses) == 201


def test_learned_beta_shrinks_when_the_projection_misleads():
    targets = torch.tensor([0, 1])
    projections = torch.tensor([[0.0, 3.0], [3.0, 0.0]])  # W s points at the wrong token
    bias = torch.tensor([0.5, 0.5])
    trajectory = learn_beta(
        projections, bias, targets, decode=lambda z: z, initial_beta=2.0, steps=100, lr=0.1
    )
    assert trajectory.betas[-1] < 0.5
    expected = torch.nn.functional.cross_entropy(trajectory.betas[-1] * projections + bias, targets).item()
    assert math.isclose(trajectory.losses[-1], expected, rel_tol=1e-5)
