"""Few-shot prompts, their tokenization and the subject token index.

Subjects and objects are data, never format strings: a template's one ``{}`` is replaced
literally, so a subject holding braces stays as it is. The prompt builder knows where it put the
query subject (its character span), and the subject token is the token covering the span's last
character, located on the real tokenization through the tokenizer's character offsets: leading
spaces, BPE merges across the subject boundary and special prefix tokens (BOS, end-of-text) need no
special cases, and the subject is never searched for in the text (where "cat" would be found inside
"category"). The subject's first token (the token covering the span's first character) is located the
same way: a subject can span several tokens, and the β study reads each of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lre_pl.dataset.relations import RelationSample
from lre_pl.errors import InputError

#: Where the subject goes in a prompt template (the relation files' convention).
SUBJECT_SLOT = "{}"


@dataclass(frozen=True)
class PromptText:
    """A prompt string and the character span of its query subject."""

    text: str
    subject_start: int
    """Offset of the query subject's first character in ``text``."""
    subject_end: int
    """Offset one past the query subject's last character."""


def fill_subject(template: str, subject: str, prefix: str = "") -> PromptText:
    """``prefix`` + ``template`` with its LAST ``{}`` replaced by ``subject``, literally."""
    head, slot, tail = template.rpartition(SUBJECT_SLOT)
    if not slot:
        raise InputError(f"prompt template {template!r} has no {SUBJECT_SLOT} slot for the subject")
    start = len(prefix) + len(head)
    return PromptText(prefix + head + subject + tail, start, start + len(subject))


def make_prompt(
    template: str, subject: str, examples: Sequence[RelationSample] = (), prefix: str = ""
) -> PromptText:
    """``prefix`` + one ``template(subj) + " " + obj`` line per example, then the query line.

    GPT-style models get their end-of-text token as ``prefix``, with no space after it (as the
    paper's ``maybe_prefix_eos`` does).
    """
    lines = "".join(f"{fill_subject(template, e.subject).text} {e.object}\n" for e in examples)
    return fill_subject(template, subject, prefix + lines)


@dataclass(frozen=True)
class EncodedPrompt:
    """One prompt as the model's tokenizer encodes it by default (no padding)."""

    text: str
    """The exact string that is run."""
    input_ids: tuple[int, ...]
    """Token ids, special tokens (BOS) included."""
    subject_index: int
    """Position in ``input_ids`` of the query subject's last token."""
    subject_first_index: int | None = None
    """Position in ``input_ids`` of the query subject's first token (``None``: a prompt built by hand,
    which knows only the last)."""

    @property
    def subject_tokens(self) -> int:
        """How many tokens the query subject spans (a token it shares with the text around counts)."""
        if self.subject_first_index is None:
            raise ValueError(
                "this prompt does not know its subject's first token: build it with encode_prompt"
            )
        return self.subject_index - self.subject_first_index + 1


def encode_prompt(tokenizer, prompt: PromptText) -> EncodedPrompt:
    """Tokenize ``prompt.text`` and find the tokens that cover the query subject's first and last
    characters (where several tokens cover one character, as the bytes of one character may: the
    first of them, and the last)."""
    if prompt.subject_end <= prompt.subject_start:
        raise InputError(f"empty subject in the prompt {prompt.text!r}: give a non-empty subject")
    encoding = tokenizer(prompt.text, return_offsets_mapping=True)
    first_char, last_char = prompt.subject_start, prompt.subject_end - 1
    subject_first_index = subject_index = None
    for index, (begin, end) in enumerate(encoding["offset_mapping"]):
        if subject_first_index is None and begin <= first_char < end:
            subject_first_index = index
        if begin <= last_char < end:
            subject_index = index
    if subject_index is None or subject_first_index is None:
        subject = prompt.text[prompt.subject_start : prompt.subject_end]
        raise InputError(
            f"no token covers the end of subject {subject!r} in {prompt.text!r}: the tokenizer gives no "
            "character offsets for it (use a fast tokenizer)"
        )
    return EncodedPrompt(prompt.text, tuple(encoding["input_ids"]), subject_index, subject_first_index)


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
