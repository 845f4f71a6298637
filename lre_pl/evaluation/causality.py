"""Causality: does editing s by the LRE's inverse make the LM name another object?

The paper's edit (``LowRankPInvEditor``): for a source sample (s, o) and a target (s', o') with a
different subject and a different object, Δs = W⁺_r (o' − o), with W⁺_r the rank-r pseudo-inverse of
the UNSCALED W (beta plays no part) and o, o' the last block's outputs at the last token of the
source's and the target's own prompts. Δs is added at the source's subject token at the LRE's
layer; the edit succeeds when the edited LM's top-1 next token is a prefix of the target's object.

The comparison edits of the paper replace s instead: by the target's s', by the target subject's
token embedding, or by o'. Every edit re-runs only the suffix of the source prompts from their
cached prefix (:class:`~lre_pl.lm.suffix.SuffixRun`), batched, resumed after the edited layer: a rank
sweep at layer l costs the blocks after l of one suffix forward per rank.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from lre_pl.dataset.matching import is_prefix_match
from lre_pl.dataset.prompts import EncodedPrompt, encode_prompt, fill_subject
from lre_pl.lm.models import LanguageModel
from lre_pl.lm.suffix import SharedPrefix, SuffixRun, add_at_subject
from lre_pl.lre.operator import WeightSpectrum

Layer = int | str
Key = TypeVar("Key")

#: The paper's comparison edits: what replaces the source's s.
COMPARISON_EDITS = ("target_subject_state", "target_subject_embedding", "target_output")


@dataclass(frozen=True)
class EditSet:
    """The known test samples that edits run between."""

    prompts: Sequence[EncodedPrompt]
    subjects: Sequence[str]
    objects: Sequence[str]
    subject_states: torch.Tensor  # [n, layer, d] s at every layer (lm.layer_names() order)
    output_states: torch.Tensor  # [n, d] o at the last token of each sample's own prompt


def edit_set(lm: LanguageModel, bundle, samples: torch.Tensor) -> EditSet:
    """The edit set of some of a bundle's test samples (``samples`` [k] indices into them): their test
    prompts, rebuilt from the bundle's template, their objects and their states."""
    indices = samples.tolist()
    return EditSet(
        [encode_prompt(lm.tokenizer, fill_subject(bundle.test_prompt_template, bundle.test_subjects[i]))
         for i in indices],
        [bundle.test_subjects[i] for i in indices],
        [bundle.test_objects[i] for i in indices],
        bundle.test_subject_states[samples].to(lm.device),
        bundle.test_output_states[samples].to(lm.device),
    )  # fmt: skip


#: Where an edit's targets come from -> the metric its rows report. ``known`` is the paper's rule
#: (targets among the evaluated known samples); ``relation`` widens it to every test sample of the
#: relation (known to the LM or not: o' is still the LM's own output on the target's prompt), so that a
#: relation whose known samples all share one object still gets edits. Its rows are labelled by their
#: metric, never mixed with the paper's.
EDIT_TARGETS = {"known": "efficacy", "relation": "efficacy_relation_targets"}


def target_pool(targets: str, known: torch.Tensor, n_test: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the test samples an edit set holds [m], the positions of the ``known`` samples among them [k]):
    under ``known`` the known samples alone, under ``relation`` every test sample."""
    if targets not in EDIT_TARGETS:
        raise ValueError(f"edit targets {targets!r}: use one of {sorted(EDIT_TARGETS)}")
    if targets == "known":
        return known, torch.arange(len(known))
    return torch.arange(n_test), known


def random_targets(
    subjects: Sequence[str], objects: Sequence[str], seed: int, sources: Sequence[int] | None = None
) -> list[tuple[int, int]]:
    """(source, target) pairs, the paper's rule: per source (``sources``, default every sample) one
    seeded random target among all samples with a different subject and a different object (sources
    with no such target are left out)."""
    generator = random.Random(seed)
    pairs = []
    for source in range(len(subjects)) if sources is None else sources:
        candidates = [t for t in range(len(subjects)) if _differ(subjects, objects, source, t)]
        if candidates:
            pairs.append((source, generator.choice(candidates)))
    return pairs


def no_target_reason(objects: Sequence[str], targets: str) -> str:
    """The count row's metric that says why no source found a target (see
    :data:`lre_pl.protocol.rows.MISSING_REASONS`)."""
    if len({o.strip().lower() for o in objects}) > 1:
        return "no_edit_pair"
    return "no_edit_target" if targets == "known" else "no_edit_target_in_relation"


def all_pairs(subjects: Sequence[str], objects: Sequence[str]) -> list[tuple[int, int]]:
    """Every (source, target) with a different subject and a different object: deterministic."""
    n = len(subjects)
    return [(s, t) for s in range(n) for t in range(n) if _differ(subjects, objects, s, t)]


def _differ(subjects, objects, source: int, target: int) -> bool:
    return (
        subjects[source] != subjects[target]
        and objects[source].strip().lower() != objects[target].strip().lower()
    )


@torch.no_grad()
def edited_outputs(
    lm: LanguageModel,
    prompts: Sequence[EncodedPrompt],
    deltas: Mapping[Layer, Sequence[torch.Tensor]],
    shared: SharedPrefix | None = None,
) -> dict[Layer, list[torch.Tensor]]:
    """``{layer: sets x o [batch, d]}``: the edited o for each set of ``deltas[layer]`` [batch, d] added
    at the subject token of ``layer``.

    One prefix pass and one unedited suffix pass for every layer; then per layer ONE suffix pass of all
    its sets together (rows ``b * sets + k``), resumed after the layer: the blocks up to it are the same
    for every edit and do not run again. ``shared``: the shared prefix of the prompts' whole set.
    """
    run = SuffixRun.prepare(lm, prompts, shared)
    unedited = run.layer_outputs(deltas)  # {layer: [batch, suffix, d]}
    outputs = {}
    for layer, sets in deltas.items():
        delta = torch.stack(list(sets), dim=1).flatten(0, 1)  # [batch * sets, d], row b * sets + k
        hidden = add_at_subject(
            unedited[layer].repeat_interleave(len(sets), dim=0), delta.to(unedited[layer])
        )
        output = run.repeated(len(sets)).forward_from(layer, hidden)  # [batch * sets, d]
        outputs[layer] = list(output.unflatten(0, (len(prompts), len(sets))).unbind(1))
    return outputs


#: An edit: (sources [batch], targets [batch]) -> Δs [batch, d] added at each source's subject token.
EditFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def pinv_edits(edits: EditSet, weight: torch.Tensor, ranks: Sequence[int]) -> dict[int, EditFn]:
    """The paper's edit per rank: Δs = W⁺_r (o' − o), W⁺_r from one SVD of the unscaled ``weight``."""
    spectrum = WeightSpectrum.of(weight)
    outputs = edits.output_states

    def edit_of(inverse: torch.Tensor) -> EditFn:
        return lambda sources, targets: (outputs[targets] - outputs[sources]) @ inverse.T

    return {rank: edit_of(spectrum.pinv(rank).to(outputs)) for rank in ranks}


def comparison_edits(lm: LanguageModel, edits: EditSet, layer: Layer) -> dict[str, EditFn]:
    """The paper's comparison edits (``COMPARISON_EDITS``): s replaced by the target's s', by the
    target subject's token embedding, or by o'."""
    states = edits.subject_states[:, lm.state_index(layer)]  # [n, d]
    embeddings = edits.subject_states[:, lm.state_index("emb")]  # [n, d]
    replacements = {
        "target_subject_state": states,
        "target_subject_embedding": embeddings,
        "target_output": edits.output_states,
    }
    return {
        kind: (lambda sources, targets, new=new: new[targets] - states[sources])
        for kind, new in replacements.items()
    }


def edit_batch_size(lm: LanguageModel, batch_size: int, pairs: int, sets: int, tokens: int) -> int:
    """Source prompts per edit pass (each runs ``sets`` edits, rows of ``tokens`` tokens at most).

    On a CPU, ``batch_size``. On a GPU, every pair at once where half the free memory holds them: a
    pass of a few rows is bound by kernel launches, not by the device (the H100 report: edits in batches
    of 8 took 15 times the Jacobians' time). A row holds its copy of the prefix's keys and values (at
    most 2 d per token and block), a few activations per token and its logits.
    """
    if lm.device.type != "cuda":
        return batch_size
    vocabulary = lm.unembedding.weight.shape[0]
    per_row = lm.dtype.itemsize * (
        2 * lm.num_blocks * lm.hidden_size * tokens
        + 4 * tokens * (lm.hidden_size + lm.intermediate_size)
        + 2 * vocabulary
    )
    return max(1, min(pairs, int(0.5 * lm.free_memory / (sets * per_row))))


def edit_hits(
    lm: LanguageModel,
    edits: EditSet,
    pairs: Sequence[tuple[int, int]],
    edit_fns: Mapping[Layer, Mapping[Key, EditFn]],
    batch_size: int = 16,
) -> dict[Layer, dict[Key, torch.Tensor]]:
    """``{layer: {key: hits [pair] bool}}``: whether each edit of ``edit_fns[layer]`` at ``layer`` makes
    the LM's top-1 token start the target's object. Sources are batched (``batch_size`` on a CPU; on a
    GPU as many as fit, :func:`edit_batch_size`); each batch's prefix and its unedited suffix run once
    for every layer and edit."""
    shared = SharedPrefix.of(lm, edits.prompts)
    sets = max((len(fns) for fns in edit_fns.values()), default=1)
    tokens = max((len(prompt.input_ids) for prompt in edits.prompts), default=1)
    batch_size = edit_batch_size(lm, batch_size, len(pairs), sets, tokens)
    hits: dict[Layer, dict[Key, list[bool]]] = {
        layer: {key: [] for key in fns} for layer, fns in edit_fns.items()
    }
    for start in range(0, len(pairs), batch_size):
        sources, targets = (torch.tensor(column) for column in zip(*pairs[start : start + batch_size]))
        deltas = {layer: [edit(sources, targets) for edit in fns.values()] for layer, fns in edit_fns.items()}
        outputs = edited_outputs(lm, [edits.prompts[i] for i in sources], deltas, shared)
        for layer, fns in edit_fns.items():
            strings = lm.token_strings(lm.decode(torch.cat(outputs[layer])).argmax(-1))  # [sets * batch]
            for k, key in enumerate(fns):
                hits[layer][key] += [
                    is_prefix_match(strings[k * len(targets) + i], edits.objects[target])
                    for i, target in enumerate(targets.tolist())
                ]
    return {
        layer: {key: torch.tensor(value, dtype=torch.bool) for key, value in by_key.items()}
        for layer, by_key in hits.items()
    }


def efficacy(
    lm: LanguageModel,
    edits: EditSet,
    pairs: Sequence[tuple[int, int]],
    edit_fns: Mapping[Layer, Mapping[Key, EditFn]],
    batch_size: int = 16,
) -> dict[Layer, dict[Key, tuple[int, int]]]:
    """``{layer: {key: (successes, edits)}}`` of :func:`edit_hits`."""
    hits = edit_hits(lm, edits, pairs, edit_fns, batch_size)
    return {
        layer: {key: (int(value.sum()), len(pairs)) for key, value in by_key.items()}
        for layer, by_key in hits.items()
    }
