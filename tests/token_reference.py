"""Per-token references for the multi-token LRE: an uncached forward of the whole prompt with a delta
added at any one position of a layer, differentiated by plain autograd (shares nothing with the engine
but the adapter's module names and the hooks helpers)."""

from __future__ import annotations

import torch

from lre_pl.lm.hooks import capture, patched


def delta_map(lm, prompt, layer, position):
    """(o(delta), s): o [d] of an uncached forward of the whole prompt with ``delta`` added to the
    output of ``layer`` at ``position``; s [d] that output unperturbed."""
    input_ids = torch.tensor([prompt.input_ids])
    module = {layer: lm.layer_module(layer)}
    with torch.no_grad(), capture(module, lambda _, hidden: hidden[0, position].clone()) as state:
        lm.base_model(input_ids=input_ids, use_cache=False)

    def output(delta):
        def add(_, hidden):
            hidden = hidden.clone()
            hidden[0, position] = hidden[0, position] + delta
            return hidden

        with patched(module, add), capture({"o": lm.blocks[-1]}, lambda _, hidden: hidden[0, -1]) as out:
            lm.base_model(input_ids=input_ids, use_cache=False)
        return out["o"]

    return output, state[layer]


def autograd_jacobian(lm, prompt, layer, position):
    """(J [d, d] = d o / d s at ``position`` of ``layer``, s [d], o [d]) by plain autograd."""
    output, state = delta_map(lm, prompt, layer, position)
    zero = torch.zeros(lm.hidden_size)
    with torch.no_grad():
        o = output(zero)
    return torch.autograd.functional.jacobian(output, zero, vectorize=True), state, o
