"""Few-shot prompts, their tokenization and the subject token index.

The subject token is the last token of the last occurrence of the subject in
the prompt, located on the real tokenization through the tokenizer's character
offsets, so leading spaces, BPE merges across the subject boundary and special
prefix tokens (BOS, end-of-text) need no special cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lre_pl.errors import InputError
from lre_pl.relations import RelationSample


def make_prompt(
    template: str, subject: str, examples: Sequence[RelationSample] = (), prefix: str = ""
) -> str:
    """``prefix`` + one ``template.format(subj) + " " + obj`` line per example, then the query line."""
    lines = [f"{template.format(example.subject)} {example.object}" for example in examples]
    lines.append(template.format(subject))
    return prefix + "\n".join(lines)


@dataclass(frozen=True)
class EncodedPrompt:
    """One prompt as the model's tokenizer encodes it by default (no padding)."""

    text: str
    """The exact string that is run."""
    input_ids: tuple[int, ...]
    """Token ids, special tokens (BOS) included."""
    subject_index: int
    """Position in ``input_ids`` of the last token of the last occurrence of the subject."""


def encode_prompt(tokenizer, text: str, subject: str) -> EncodedPrompt:
    """Tokenize ``text`` and locate ``subject`` in it, or raise a one-line ValueError."""
    start = text.rfind(subject)
    if not subject or start < 0:
        raise InputError(f"subject {subject!r} not found in the prompt {text!r}: check the template")
    encoding = tokenizer(text, return_offsets_mapping=True)
    last_char = start + len(subject) - 1
    subject_index = None
    for index, (begin, end) in enumerate(encoding["offset_mapping"]):
        if begin <= last_char < end:
            subject_index = index
    if subject_index is None:
        raise InputError(f"no token covers the end of subject {subject!r} in {text!r}")
    return EncodedPrompt(text, tuple(encoding["input_ids"]), subject_index)


@dataclass
class PaddedBatch:
    """Left-padded prompts: every prompt ends in the last column."""

    input_ids: torch.Tensor  # [batch, pos]
    attention_mask: torch.Tensor  # [batch, pos]
    position_ids: torch.Tensor  # [batch, pos]
    subject_index: torch.Tensor  # [batch] column of the subject token in the padded rows


def pad_left(prompts: Sequence[EncodedPrompt], pad_token_id: int) -> PaddedBatch:
    """Left-pad so that the last prompt token of every row is column -1."""
    width = max(len(p.input_ids) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    subject_index = torch.empty(len(prompts), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        pad = width - len(prompt.input_ids)
        input_ids[row, pad:] = torch.tensor(prompt.input_ids)
        attention_mask[row, pad:] = 1
        subject_index[row] = pad + prompt.subject_index
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return PaddedBatch(input_ids, attention_mask, position_ids, subject_index)
