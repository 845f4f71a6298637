"""Learning beta: is one scale on W s enough to make decode(beta W s + b) name the object?"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lre_pl.lre.operator import relation_readout


@dataclass
class BetaTrajectory:
    betas: list[float]  # beta before each step, then the final one
    losses: list[float]  # cross-entropy before each step, then the final one


def learn_beta(
    projections: torch.Tensor,  # [sample, d] W s_i (unscaled)
    bias: torch.Tensor,  # [d]
    target_token_ids: torch.Tensor,  # [sample] the objects' first tokens
    decode: Callable[[torch.Tensor], torch.Tensor],  # [sample, d] -> [sample, vocab] logits
    initial_beta: float = 1.0,
    steps: int = 100,
    lr: float = 0.05,
) -> BetaTrajectory:
    """Minimise the mean cross-entropy of decode(beta W s_i + b) over log(beta) with Adam.

    Deterministic given its inputs, so every rank that runs it on the same
    gathered samples ends with the same beta.
    """
    log_beta = torch.tensor(math.log(initial_beta), dtype=projections.dtype, device=projections.device)
    log_beta.requires_grad_(True)
    optimizer = torch.optim.Adam([log_beta], lr=lr)
    trajectory = BetaTrajectory([], [])
    for step in range(steps + 1):
        loss = F.cross_entropy(decode(relation_readout(projections, bias, log_beta.exp())), target_token_ids)
        trajectory.betas.append(log_beta.exp().item())
        trajectory.losses.append(loss.item())
        if step == steps:
            break
        optimizer.zero_grad()
        (gradient,) = torch.autograd.grad(loss, log_beta)
        log_beta.grad = gradient
        optimizer.step()
    return trajectory
