"""Hidden states of many prompts at every layer, with the prompts' shared prefix run once.

The test prompts of a relation are one few-shot prompt with a different subject at its end: the
tokens they share (in practice 80-90 % of each prompt) run once into a key/value cache, and each
batch runs only its own tokens from a copy of that cache. States and outputs equal a full forward of
every prompt up to float reassociation (tests compare them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from lre_pl.dataset.prompts import EncodedPrompt
from lre_pl.lm.hooks import capture
from lre_pl.lm.models import LanguageModel
from lre_pl.lm.suffix import SharedPrefix


@dataclass
class PromptStates:
    """What the LM computes on a set of prompts, kept for estimation, validation and sweeps."""

    subject_states: torch.Tensor  # [prompt, layer, d] s at the subject token, layers as lm.layer_names()
    output_states: torch.Tensor  # [prompt, d] o: last block output at the last token, before the final norm
    top_token_ids: torch.Tensor  # [prompt] the LM's own next-token prediction


@torch.no_grad()
def collect_states(
    lm: LanguageModel, prompts: Sequence[EncodedPrompt], batch_size: int = 16, progress: str | None = None
) -> PromptStates:
    """Read s at every layer, o and the LM's top-1 token of every prompt, in batches of ``batch_size``.

    ``progress``: the label of a progress bar over prompts (``None``: no bar).
    """
    prefix = SharedPrefix.of(lm, prompts)
    shared = prefix.length
    width = min(batch_size, len(prompts))  # every batch runs at this width, topped up if needed
    layers = {layer: lm.layer_module(layer) for layer in lm.layer_names()}
    rows = torch.arange(width, device=lm.device)
    subject_states, output_states = [], []
    bar = tqdm(total=len(prompts), desc=progress, unit="prompt", disable=progress is None, leave=False)
    for start in range(0, len(prompts), width):
        batch = list(prompts[start : start + width])
        real = len(batch)
        batch += [batch[-1]] * (width - real)  # the last batch is topped up to the cache's width
        rest = max(len(p.input_ids) for p in batch) - shared
        input_ids = torch.full((width, rest), lm.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((width, shared + rest), dtype=torch.long)
        attention_mask[:, :shared] = 1
        for row, prompt in enumerate(batch):  # right-padded after the shared prefix
            own = prompt.input_ids[shared:]
            input_ids[row, : len(own)] = torch.tensor(own)
            attention_mask[row, shared : shared + len(own)] = 1
        subject_columns = torch.tensor([p.subject_index - shared for p in batch], device=lm.device)
        last_columns = torch.tensor([len(p.input_ids) - 1 - shared for p in batch], device=lm.device)
        position_ids = (shared + torch.arange(rest)).expand(width, rest)
        with (
            capture(layers, lambda _, hidden, at=subject_columns: hidden[rows, at]) as at_subject,
            capture({"o": lm.blocks[-1]}, lambda _, hidden, at=last_columns: hidden[rows, at]) as last,
        ):
            lm.base_model(
                input_ids=input_ids.to(lm.device),
                attention_mask=attention_mask.to(lm.device),
                position_ids=position_ids.to(lm.device),
                use_cache=shared > 0,
                **{lm.cache_argument: prefix.for_batch(width)},
            )
        output_states.append(last["o"][:real])  # [batch, d]
        subject_states.append(torch.stack([at_subject[layer] for layer in layers], dim=1)[:real])
        bar.update(real)
    bar.close()
    outputs = torch.cat(output_states)  # [prompt, d]
    return PromptStates(torch.cat(subject_states), outputs, lm.decode(outputs).argmax(-1))
