"""An independent Jacobian: a full forward of the whole prompt, no cache, no batching.

Deliberately shares nothing with lre_pl.lm.jacobian but the adapter's module names and the hooks helpers:
the subject state is *replaced* (not perturbed) in a plain forward of the
unpadded prompt, and ``torch.autograd.functional.jacobian`` differentiates it.
"""

from __future__ import annotations

import torch

from lre_pl.dataset.prompts import EncodedPrompt
from lre_pl.lm.hooks import capture, patched
from lre_pl.lm.models import LanguageModel


def full_forward_map(lm: LanguageModel, prompt: EncodedPrompt, layer):
    """(F, s0): F(s) = last block output at the last token with s written at the subject token."""
    input_ids = torch.tensor([prompt.input_ids])
    module = {layer: lm.layer_module(layer)}
    with torch.no_grad(), capture(module, lambda _, hidden: hidden[0, prompt.subject_index].clone()) as state:
        lm.base_model(input_ids=input_ids)

    def function(subject_state: torch.Tensor) -> torch.Tensor:
        def write(_, hidden):
            hidden = hidden.clone()
            hidden[0, prompt.subject_index] = subject_state
            return hidden

        with patched(module, write), capture({"o": lm.blocks[-1]}, lambda _, hidden: hidden[0, -1]) as out:
            lm.base_model(input_ids=input_ids, use_cache=False)
        return out["o"]

    return function, state[layer]


def reference_jacobian(lm: LanguageModel, prompt: EncodedPrompt, layer) -> tuple[torch.Tensor, torch.Tensor]:
    """(J [d, d], o [d]) by plain autograd over the full prompt."""
    function, state = full_forward_map(lm, prompt, layer)
    with torch.no_grad():
        output = function(state)
    return torch.autograd.functional.jacobian(function, state), output


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


def edited_output(lm: LanguageModel, prompt: EncodedPrompt, layer, delta: torch.Tensor) -> torch.Tensor:
    """o [d] after adding ``delta`` at the subject token of ``layer``: the whole prompt, unpadded, no cache."""

    def add(_, hidden):
        hidden = hidden.clone()
        hidden[0, prompt.subject_index] += delta
        return hidden

    last = {"o": lm.blocks[-1]}
    with (
        torch.no_grad(),
        patched({layer: lm.layer_module(layer)}, add),
        capture(last, lambda _, h: h[0, -1]) as out,
    ):
        lm.base_model(input_ids=torch.tensor([prompt.input_ids]), use_cache=False)
    return out["o"]
