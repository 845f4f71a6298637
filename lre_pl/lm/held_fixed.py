"""Parts of the model held fixed in a Jacobian: which parts there are, and the norms' part.

A Jacobian with a part *held fixed* differentiates the same forward (the same values) with no
gradient through that part's data-dependent factor: where the flatness of the map from subject to
object sits (issue 15, hypothesis 2).

- ``attention``: the attention probabilities are constants (no gradient through the softmax); values
  and every projection keep theirs. The Jacobian engine runs it as a variant of its attention
  implementation (:func:`lre_pl.lm.jacobian.split_prefix_attention`).
- ``norms``: every norm inside the blocks has its scale factor 1 / rms (RMSNorm) or 1 / σ (LayerNorm)
  held fixed; the centring of LayerNorm and the weight (``1 + w`` for Gemma) keep their gradients.
  The family's :class:`~lre_pl.lm.models.NormKind` says how its norms compute; :func:`norms_held_fixed`
  replaces their forwards.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lre_pl.errors import InputError
from lre_pl.lm.hooks import replaced_forwards
from lre_pl.lm.models import LanguageModel, NormKind

#: The parts a Jacobian can hold fixed.
HELD_FIXED_PARTS = ("attention", "norms")


def check_held_fixed(parts: Iterable[str]) -> frozenset[str]:
    """``parts`` as a frozenset, or a one-line error naming the part that does not exist."""
    parts = frozenset(parts)
    unknown = sorted(parts - set(HELD_FIXED_PARTS))
    if unknown:
        raise InputError(
            f"cannot hold {unknown[0]!r} fixed in a Jacobian: use a subset of {', '.join(HELD_FIXED_PARTS)}"
        )
    return parts


def held_scale_norm(kind: NormKind, module: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``module``'s norm of ``hidden`` [..., d] with its scale factor detached (computed in float32,
    returned in ``hidden``'s dtype: in float32 the very values of the module's own forward)."""
    x = hidden.float()
    if kind.centered:
        x = x - x.mean(-1, keepdim=True)
    scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + getattr(module, kind.epsilon)).detach()  # [..., 1]
    x = x * scale
    if module.weight is not None:
        x = x * (kind.weight_offset + module.weight.float())
    if getattr(module, "bias", None) is not None:
        x = x + module.bias.float()
    return x.to(hidden.dtype)


def block_norms(lm: LanguageModel) -> list[nn.Module]:
    """Every norm inside ``lm``'s blocks: the modules of its final norm's class."""
    norm_class = type(lm.final_norm)
    return [module for module in lm.blocks.modules() if type(module) is norm_class]


def norms_held_fixed(lm: LanguageModel):
    """A context manager: forwards run in it compute every norm of ``lm``'s blocks with its scale held fixed."""
    kind, norms = lm.adapter.norm, block_norms(lm)
    if not norms:
        raise InputError(
            f"cannot hold the norms fixed for {lm.model.config.model_type!r}: its blocks hold no module of "
            f"its final norm's class {type(lm.final_norm).__name__}; fix its ArchitectureAdapter"
        )
    return replaced_forwards(norms, lambda module: lambda hidden: held_scale_norm(kind, module, hidden))
