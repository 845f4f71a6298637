"""An independent Jacobian: a full forward of the whole prompt, no cache, no batching.

Deliberately shares nothing with lre_pl.jacobian but the adapter's module names:
the subject state is *replaced* (not perturbed) in a plain forward of the
unpadded prompt, and ``torch.autograd.functional.jacobian`` differentiates it.
"""

from __future__ import annotations

import torch

from lre_pl.models import LanguageModel
from lre_pl.prompts import EncodedPrompt


def full_forward_map(lm: LanguageModel, prompt: EncodedPrompt, layer):
    """(F, s0): F(s) = last block output at the last token with s written at the subject token."""
    input_ids = torch.tensor([prompt.input_ids])
    captured = {}

    def capture(module, args, output):
        captured["s"] = output[0, prompt.subject_index].detach().clone()

    handle = lm.layer_module(layer).register_forward_hook(capture)
    with torch.no_grad():
        lm.base_model(input_ids=input_ids)
    handle.remove()

    def function(state: torch.Tensor) -> torch.Tensor:
        out = {}

        def write(module, args, output):
            output = output.clone()
            output[0, prompt.subject_index] = state
            return output

        def read(module, args, output):
            out["o"] = output[0, -1]

        handles = [lm.layer_module(layer).register_forward_hook(write)]
        handles.append(lm.blocks[-1].register_forward_hook(read))
        try:
            lm.base_model(input_ids=input_ids, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        return out["o"]

    return function, captured["s"]


def reference_jacobian(lm: LanguageModel, prompt: EncodedPrompt, layer) -> tuple[torch.Tensor, torch.Tensor]:
    """(J [d, d], o [d]) by plain autograd over the full prompt."""
    function, state = full_forward_map(lm, prompt, layer)
    with torch.no_grad():
        output = function(state)
    return torch.autograd.functional.jacobian(function, state), output


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()
