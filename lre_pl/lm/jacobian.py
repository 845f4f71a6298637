"""The Jacobian engine: J_l = d o / d s_l for many layers and samples in one pass.

For a batch of prompts, the tokens before the subject token (the *prefix*) run
once without gradients and are kept as a key/value cache (:class:`lre_pl.lm.suffix.SuffixRun`).
The tokens from the subject on (the *suffix*) then run through the model's own forward, with a zero
perturbation ``delta_l`` added to the output of every requested layer ``l`` at
the subject token. ``o`` is the last block's output at the last token (before
the final norm). Because ``delta_l`` enters the residual stream exactly where
``s_l`` lives, ``d o / d delta_l = d o / d s_l = J_l`` with everything upstream
fixed and everything downstream recomputed, so one batch of d vector-Jacobian
products (one per row of ``o``) yields J for all requested layers at once.

Running the suffix through the model's own forward keeps masks, RoPE variants,
sliding windows and embedding scales the model's business: no hand-rolled
layer loop.

Parts of the model can be held fixed (``held_fixed``: the attention probabilities, the norms' scale
factors; see :mod:`lre_pl.lm.held_fixed`): the same forward, with no gradient through those factors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from lre_pl.dataset.prompts import EncodedPrompt
from lre_pl.errors import InputError
from lre_pl.lm.held_fixed import check_held_fixed, norms_held_fixed
from lre_pl.lm.models import LanguageModel
from lre_pl.lm.suffix import SuffixRun, add_at_subject

Layer = int | str


@dataclass
class JacobianResult:
    """Per-layer Jacobians and states of one batch of prompts."""

    jacobians: dict[Layer, torch.Tensor]  # layer -> [batch, d, d], J[b, i, j] = d o_i / d s_j
    subject_states: dict[Layer, torch.Tensor]  # layer -> [batch, d] s at the subject token
    output_states: torch.Tensor  # [batch, d] o: last block output at the last token, pre-norm

    def biases(self, layer: Layer) -> torch.Tensor:
        """b_i = o_i - J_i s_i, [batch, d]."""
        jacobian, state = self.jacobians[layer], self.subject_states[layer]
        return self.output_states - torch.einsum("bij,bj->bi", jacobian, state)


#: On a CPU, backward passes of about this many rows (products x samples) run fastest: larger ones
#: leave the caches (measured on SmolLM2: 96 rows 3.7 s, 576 rows 5.1 s per Jacobian, 2 threads).
CPU_ROWS_PER_PASS = 96


SPLIT_PREFIX_ATTENTION = "lre_pl_split_prefix"


class CacheParts:
    """The prefix and suffix keys and values that the last key/value cache update joined.

    A cache layer returns ``cat(prefix, suffix)``; slicing the suffix back out of it would cost, in every
    vector-Jacobian product, a zero-filled gradient of the whole joined tensor (the gradient of a slice),
    prefix / suffix times the useful size: that fill was the engine's largest cost after the matmuls. While
    :meth:`recording`, the parts are kept beside the joined tensors, and :func:`split_prefix_attention`
    takes them where the joined tensors it is given are exactly those (else it slices, with the same
    numbers).
    """

    def __init__(self):
        # (joined keys, joined values, prefix keys, suffix keys, prefix values, suffix values)
        self.last: tuple[torch.Tensor, ...] | None = None

    @contextlib.contextmanager
    def recording(self):
        from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

        classes = (DynamicLayer, DynamicSlidingWindowLayer)
        originals = {cls: cls.__dict__["update"] for cls in classes}

        def recorded(update):
            def recording_update(layer, key_states, value_states, *args, **kwargs):
                before = (layer.keys, layer.values) if layer.is_initialized else None
                keys, values = update(layer, key_states, value_states, *args, **kwargs)
                # Both layer kinds join by cat(before, new); a window that cut keys fails the length test.
                if before is not None and keys.shape[-2] == before[0].shape[-2] + key_states.shape[-2]:
                    self.last = (keys, values, before[0], key_states, before[1], value_states)
                return keys, values

            return recording_update

        try:
            for cls, update in originals.items():
                cls.update = recorded(update)
            yield
        finally:
            for cls, update in originals.items():
                cls.update = update
            self.last = None

    def split(self, key: torch.Tensor, value: torch.Tensor):
        """((prefix keys, suffix keys), (prefix values, suffix values)) of the joined ``key`` and ``value``
        of the last update, or ``None`` where they are not those tensors."""
        last, self.last = self.last, None  # the parts are read once: no tensor outlives its layer
        if last is None or last[0] is not key or last[1] is not value:
            return None
        return (last[2], last[3]), (last[4], last[5])


cache_parts = CacheParts()


def split_prefix_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    scaling=None,
    dropout=0.0,
    softcap=None,
    hold_weights=False,
    **kwargs,
):
    """Eager attention for the suffix pass, with two savings that change no number.

    - Keys and values of the cached prefix are detached: they do not depend on any delta, yet
      plain eager attention computes their gradients (prefix length / suffix length times the
      useful work, ~20x on few-shot prompts) only for the cache concatenation to drop them.
    - Grouped-query heads share their key/value heads through a reshape of the queries instead of
      ``repeat_kv`` copies (whose backward is a further sum).

    ``hold_weights``: the attention probabilities are constants for autograd (attention held fixed,
    :mod:`lre_pl.lm.held_fixed`); the values keep their gradients.

    Shapes: query [batch, heads, q_len, head_dim]; key, value [batch, kv_heads, k_len, head_dim].
    """
    batch, heads, q_len, head_dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    groups, prefix = heads // kv_heads, k_len - q_len
    scaling = head_dim**-0.5 if scaling is None else scaling
    grouped = query.reshape(batch, kv_heads, groups * q_len, head_dim)
    parts = cache_parts.split(key, value)
    if parts is None:
        parts = ((key[:, :, :prefix], key[:, :, prefix:]), (value[:, :, :prefix], value[:, :, prefix:]))
    (prefix_keys, suffix_keys), (prefix_values, suffix_values) = parts
    keys, values = (prefix_keys.detach(), suffix_keys), (prefix_values.detach(), suffix_values)
    scores = torch.cat([grouped @ part.transpose(-1, -2) for part in keys], dim=-1) * scaling
    scores = scores.view(batch, heads, q_len, k_len)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask[..., :k_len]
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if hold_weights:
        weights = weights.detach()
    weights = weights.view(batch, kv_heads, groups * q_len, k_len)
    output = weights[..., :prefix] @ values[0] + weights[..., prefix:] @ values[1]
    return output.view(batch, heads, q_len, head_dim).transpose(1, 2), None


class HeldWeightsAttention:
    """:func:`split_prefix_attention` with the attention weights held fixed, keeping the attention
    modules that ran through it: a family whose attention bypasses transformers' attention interface
    would otherwise silently give the plain Jacobian."""

    def __init__(self):
        self.modules: set[int] = set()  # id() of every attention module run since the last clear()

    def __call__(self, module, *args, **kwargs):
        self.modules.add(id(module))
        return split_prefix_attention(module, *args, hold_weights=True, **kwargs)


HELD_WEIGHTS_ATTENTION = "lre_pl_split_prefix_held_weights"
held_weights_attention = HeldWeightsAttention()


def _register_split_prefix_attention() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    for name, function in (
        (SPLIT_PREFIX_ATTENTION, split_prefix_attention),
        (HELD_WEIGHTS_ATTENTION, held_weights_attention),
    ):
        AttentionInterface.register(name, function)
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS["eager"])


_register_split_prefix_attention()


@contextlib.contextmanager
def _attention_implementation(lm: LanguageModel, name: str):
    """Temporarily run every attention layer of ``lm`` with the registered implementation ``name``."""
    configs = {id(m.config): m.config for m in lm.model.modules() if hasattr(m, "config")}.values()
    previous = [(config, config._attn_implementation) for config in configs]
    try:
        for config, _ in previous:
            config._attn_implementation = name
        yield
    finally:
        for config, implementation in previous:
            config._attn_implementation = implementation


def auto_chunk_size(lm: LanguageModel, batch_size: int, tokens: int, layers_in_graph: int) -> int:
    """Products per backward pass: what fits in half the free memory, and on a CPU what runs fastest."""
    d = lm.hidden_size
    fastest = d if lm.device.type == "cuda" else max(8, CPU_ROWS_PER_PASS // batch_size)
    # A product keeps a few activations of every block in the graph alive at once.
    per_product = (
        4 * batch_size * tokens * layers_in_graph * (8 * d + 2 * lm.intermediate_size) * lm.dtype.itemsize
    )
    return max(1, min(fastest, d, int(0.5 * lm.free_memory / max(per_product, 1))))


def compute_jacobians(
    lm: LanguageModel,
    prompts: Sequence[EncodedPrompt],
    layers: Sequence[Layer],
    chunk_size: int | None = None,
    held_fixed: Iterable[str] = frozenset(),
) -> JacobianResult:
    """J, s and o for every prompt of the batch and every layer in ``layers``.

    Args:
        lm: the frozen model.
        prompts: encoded prompts with their subject token index; any lengths.
        layers: ``"emb"`` and/or block indices.
        chunk_size: vector-Jacobian products per backward pass; ``None`` picks it from free memory
            and, on a CPU, the size that runs fastest (see ``auto_chunk_size``).
        held_fixed: the parts of the model whose data-dependent factors get no gradient
            (:mod:`lre_pl.lm.held_fixed`): ``attention`` (the attention probabilities), ``norms`` (every
            block norm's scale factor), both, or none (the plain Jacobian). s and o do not change.
    """
    layers = [lm.check_layer(layer) for layer in layers]
    held_fixed = check_held_fixed(held_fixed)
    attention = HELD_WEIGHTS_ATTENTION if "attention" in held_fixed else SPLIT_PREFIX_ATTENTION
    d = lm.hidden_size
    run = SuffixRun.prepare(lm, prompts)

    def suffix_output(*deltas: torch.Tensor) -> tuple[torch.Tensor, dict[Layer, torch.Tensor]]:
        """(o [batch, d], s per layer) with ``deltas[i]`` [batch, d] added to layer i's subject state."""
        delta_of = dict(zip(layers, deltas))
        states: dict[Layer, torch.Tensor] = {}

        def perturb(layer: Layer, hidden: torch.Tensor) -> torch.Tensor:  # hidden [batch, suffix, d]
            states[layer] = hidden[:, 0]
            return add_at_subject(hidden, delta_of[layer])

        held_weights_attention.modules.clear()
        norms = norms_held_fixed(lm) if "norms" in held_fixed else contextlib.nullcontext()
        with _attention_implementation(lm, attention), norms, cache_parts.recording():
            output = run.forward(perturb, layers)
        if attention == HELD_WEIGHTS_ATTENTION and len(held_weights_attention.modules) < lm.num_blocks:
            raise InputError(
                f"cannot hold attention fixed for {lm.model.config.model_type!r}: its attention ran through "
                f"transformers' attention interface in {len(held_weights_attention.modules)} of "
                f"{lm.num_blocks} blocks; hold only the norms fixed"
            )
        return output, states

    zeros = [torch.zeros(len(prompts), d, device=lm.device, dtype=lm.dtype) for _ in layers]
    # torch.func: one forward, then batches of vector-Jacobian products by vmap over the backward
    # (its batching rules cover every op here; autograd.grad(is_grads_batched=True) falls back to a
    # per-row loop for silu and softmax backward).
    with torch.enable_grad():
        output, products, states = torch.func.vjp(suffix_output, *zeros, has_aux=True)  # output [batch, d]

    layers_in_graph = lm.num_blocks - min(-1 if layer == "emb" else layer for layer in layers)
    chunk = chunk_size or auto_chunk_size(lm, len(prompts), run.suffix_tokens, layers_in_graph)
    jacobians = {layer: torch.empty(len(prompts), d, d, device=lm.device, dtype=lm.dtype) for layer in layers}
    eye = torch.eye(d, device=lm.device, dtype=lm.dtype)
    for start in range(0, d, chunk):
        stop = min(start + chunk, d)
        # cotangents[k, b, :] = e_{start + k} for every sample b: row start+k of each J_b.
        cotangents = eye[start:stop, None, :].expand(stop - start, len(prompts), d)
        grads = torch.func.vmap(products)(cotangents)  # per layer [chunk, batch, d]
        for layer, grad in zip(layers, grads):
            jacobians[layer][:, start:stop] = grad.transpose(0, 1)
    return JacobianResult(jacobians, states, output.detach())
