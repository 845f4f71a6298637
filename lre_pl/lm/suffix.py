"""Re-running prompts from their subject token on, many times, from one cached prefix.

The tokens before the subject token (the *prefix*) run once, without gradients, into a key/value
cache. The *suffix* (the subject token and what follows) then runs through the model's own forward
as often as needed, each time from a fork of that cache (a forward appends to the cache it is
given: reusing one would silently shift positions), with the outputs of chosen layers rewritten.
The Jacobian engine and the causality edits both run on this: a rank sweep of edits costs one
suffix forward per rank, never a forward of the whole prompt. An edit at layer l changes nothing up to
l, so edits resume after it (:meth:`SuffixRun.forward_from`) from the unedited output of l, read once
for all of them (:meth:`SuffixRun.layer_outputs`): the blocks up to l are not re-run per edit.

Batching: prefixes are left-padded to one width and suffixes right-padded, so that the subject
token of every prompt sits in one column (column 0 of the suffix), with explicit position ids. The
tokens that every prompt of a batch begins with (the few-shot examples of one relation's prompts: most
of each prompt) run once, for one row, and their cache is repeated across the batch
(:class:`SharedPrefix`); the rest of each prefix follows, left-padded after them.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from lre_pl.dataset.prompts import EncodedPrompt
from lre_pl.lm.hooks import bypassed, patched
from lre_pl.lm.models import LanguageModel

Layer = int | str


def shared_prefix_length(prompts: Sequence[EncodedPrompt]) -> int:
    """Number of leading tokens every prompt has in common, stopping before any subject token."""
    first = prompts[0].input_ids
    length = min(p.subject_index for p in prompts)
    for prompt in prompts[1:]:
        ids = prompt.input_ids
        same = 0
        while same < length and ids[same] == first[same]:
            same += 1
        length = same
    return length


def fork_cache(cache):
    """A copy of a key/value cache that forwards can append to, leaving ``cache`` as it was.

    transformers' dynamic cache layers append and repeat by assigning new tensors (``torch.cat``,
    ``repeat_interleave``), never in place: new layer objects over the same tensors suffice. (A deep
    copy of every tensor cost a quarter of an edit pass.) Tests reuse one cache across forwards and
    compare each with an uncached forward.
    """
    fork = copy.copy(cache)
    fork.layers = [copy.copy(layer) for layer in cache.layers]
    return fork


@dataclass
class SharedPrefix:
    """The key/value cache of the tokens that every prompt of a set begins with, run for one row."""

    length: int
    cache: object | None  # None when the prompts share no token

    @classmethod
    @torch.no_grad()
    def of(cls, lm: LanguageModel, prompts: Sequence[EncodedPrompt]) -> SharedPrefix:
        length = shared_prefix_length(prompts)
        if length == 0:
            return cls(0, None)
        ids = torch.tensor([prompts[0].input_ids[:length]], device=lm.device)
        return cls(length, lm.base_model(input_ids=ids, use_cache=True)[1])

    def for_batch(self, batch: int):
        """A fork of the cache, repeated to ``batch`` rows (forwards append to their cache)."""
        if self.cache is None:
            return None
        cache = fork_cache(self.cache)
        cache.batch_repeat_interleave(batch)
        return cache


@dataclass
class SuffixRun:
    """A batch of prompts split at their subject tokens, with the prefix's key/value cache."""

    lm: LanguageModel
    input_ids: torch.Tensor  # [batch, P + S] prefix left-padded to P columns, suffix right-padded
    attention_mask: torch.Tensor  # [batch, P + S]
    position_ids: torch.Tensor  # [batch, P + S]
    prefix_width: int  # P: the subject token of every row is column P
    last_index: torch.Tensor  # [batch] column of each prompt's last token, counted from P
    cache: object | None  # the prefix's key/value cache (None: every subject is at position 0)

    @classmethod
    def prepare(
        cls, lm: LanguageModel, prompts: Sequence[EncodedPrompt], shared: SharedPrefix | None = None
    ) -> SuffixRun:
        """``shared``: the shared prefix of a larger set these prompts belong to (run once for all
        its batches); ``None`` runs the shared prefix of these prompts."""
        shared = shared or SharedPrefix.of(lm, prompts)
        c = shared.length  # columns [0, c): the shared tokens; [c, P): each prompt's own prefix
        prefix_width = max(p.subject_index for p in prompts)
        suffix_width = max(len(p.input_ids) - p.subject_index for p in prompts)
        shape = (len(prompts), prefix_width + suffix_width)
        input_ids = torch.full(shape, lm.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(shape, dtype=torch.long)
        last_index = torch.empty(len(prompts), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            begin = prefix_width - prompt.subject_index + c  # the own tokens, after left padding
            end = prefix_width + len(prompt.input_ids) - prompt.subject_index
            input_ids[row, :c] = torch.tensor(prompt.input_ids[:c])
            input_ids[row, begin:end] = torch.tensor(prompt.input_ids[c:])
            attention_mask[row, :c] = 1
            attention_mask[row, begin:end] = 1
            last_index[row] = end - 1 - prefix_width
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        input_ids, attention_mask, position_ids, last_index = (
            t.to(lm.device) for t in (input_ids, attention_mask, position_ids, last_index)
        )
        cache = shared.for_batch(len(prompts))
        if prefix_width > c:  # the own prefixes, after the shared tokens
            with torch.no_grad():
                cache = lm.base_model(
                    input_ids=input_ids[:, c:prefix_width],
                    attention_mask=attention_mask[:, :prefix_width],
                    position_ids=position_ids[:, c:prefix_width],
                    use_cache=True,
                    **{lm.cache_argument: cache},
                )[1]  # the cache (transformers 5 names it `cache`, earlier versions `past_key_values`)
        return cls(lm, input_ids, attention_mask, position_ids, prefix_width, last_index, cache)

    def repeated(self, times: int) -> SuffixRun:
        """This batch with every row repeated ``times`` times in a row (row b -> rows b * times + k)."""
        cache = fork_cache(self.cache) if self.cache is not None else None
        if cache is not None:
            cache.batch_repeat_interleave(times)
        rows = (self.input_ids, self.attention_mask, self.position_ids)
        return SuffixRun(
            self.lm,
            *(t.repeat_interleave(times, dim=0) for t in rows),
            self.prefix_width,
            self.last_index.repeat_interleave(times),
            cache,
        )

    @property
    def suffix_tokens(self) -> int:
        return self.input_ids.shape[1] - self.prefix_width

    def forward(
        self, rewrite: Callable[[Layer, torch.Tensor], torch.Tensor], layers: Iterable[Layer]
    ) -> torch.Tensor:
        """o [batch, d]: the last block's output at every prompt's last token (before the final norm).

        ``rewrite(layer, hidden)`` replaces the output of each of ``layers``; ``hidden`` is
        [batch, suffix, d] with the subject token in column 0.
        """
        return self._run(rewrite, set(layers), contextlib.nullcontext())

    def layer_outputs(self, layers: Iterable[Layer]) -> dict[Layer, torch.Tensor]:
        """The unedited output [batch, suffix, d] of each of ``layers``: what :meth:`forward_from` resumes from."""
        outputs = {}

        def keep(layer: Layer, hidden: torch.Tensor) -> torch.Tensor:
            outputs[layer] = hidden
            return hidden

        self.forward(keep, layers)
        return outputs

    def forward_from(self, layer: Layer, hidden: torch.Tensor) -> torch.Tensor:
        """o [batch, d] of the forward resumed after ``layer``, whose output is ``hidden`` [batch, suffix, d].

        ``layer`` and the blocks before it do not run (they return ``hidden``): an edit at ``layer``
        costs only the blocks after it.
        """
        lm = self.lm
        skipped = [lm.token_embedding] if layer == "emb" else list(lm.blocks)[: lm.state_index(layer)]
        return self._run(lambda _, h: h, set(), bypassed(skipped, hidden))

    def _run(self, rewrite, layers: set, bypass) -> torch.Tensor:
        lm, p = self.lm, self.prefix_width
        last_block = lm.num_blocks - 1
        rows = torch.arange(len(self.input_ids), device=lm.device)
        captured: dict[str, torch.Tensor] = {}

        def hook(layer: Layer, hidden: torch.Tensor) -> torch.Tensor:
            if layer in layers:
                hidden = rewrite(layer, hidden)
            if layer == last_block:
                captured["o"] = hidden[rows, self.last_index]
            return hidden

        with bypass, patched({layer: lm.layer_module(layer) for layer in {*layers, last_block}}, hook):
            lm.base_model(
                input_ids=self.input_ids[:, p:],
                attention_mask=self.attention_mask,
                position_ids=self.position_ids[:, p:],
                use_cache=self.cache is not None,
                # The suffix forward appends to the cache it is given: give it a fork.
                **{lm.cache_argument: fork_cache(self.cache) if self.cache is not None else None},
            )
        return captured["o"]


def add_at_subject(hidden: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``hidden`` [batch, suffix, d] with ``delta`` [batch, d] added at the subject token (column 0)."""
    return torch.cat([hidden[:, :1] + delta[:, None], hidden[:, 1:]], dim=1)
