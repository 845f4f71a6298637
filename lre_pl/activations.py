"""Hidden states of many prompts at every layer, from one batched forward each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from lre_pl.hooks import capture
from lre_pl.models import LanguageModel
from lre_pl.prompts import EncodedPrompt, pad_left


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
    """Run ``prompts`` in left-padded batches and read s at every layer, o and the top-1 token.

    ``progress``: the label of a progress bar over prompts (``None``: no bar).
    """
    subject_states, output_states = [], []
    layers = {layer: lm.layer_module(layer) for layer in lm.layer_names()}
    bar = tqdm(total=len(prompts), desc=progress, unit="prompt", disable=progress is None, leave=False)
    for start in range(0, len(prompts), batch_size):
        batch = pad_left(prompts[start : start + batch_size], lm.tokenizer.pad_token_id)
        rows = torch.arange(len(batch.input_ids), device=lm.device)
        columns = batch.subject_index.to(lm.device)
        with (
            capture(
                layers, lambda _, hidden, rows=rows, columns=columns: hidden[rows, columns]
            ) as at_subject,
            capture({"o": lm.blocks[-1]}, lambda _, hidden: hidden[:, -1]) as last,
        ):
            lm.base_model(
                input_ids=batch.input_ids.to(lm.device),
                attention_mask=batch.attention_mask.to(lm.device),
                position_ids=batch.position_ids.to(lm.device),
                use_cache=False,
            )
        output_states.append(last["o"])  # [batch, d]
        subject_states.append(
            torch.stack([at_subject[layer] for layer in layers], dim=1)
        )  # [batch, layer, d]
        bar.update(len(batch.input_ids))
    bar.close()
    outputs = torch.cat(output_states)
    return PromptStates(torch.cat(subject_states), outputs, lm.decode(outputs).argmax(-1))
