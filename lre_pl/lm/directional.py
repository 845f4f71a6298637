"""Forward-mode products J(x) v at subject states replaced by chosen points, many tangents per call.

The chord questions need, for a prompt and a point x written in place of its subject state at one
layer, o(x) and directional derivatives J(x) v for many tangents v (J = d o / d s at that layer, o the
last block's output at the last token before the final norm, as in :mod:`lre_pl.lm.jacobian`). Each
product is one forward-mode pass (``torch.func.jvp``), never a full Jacobian: d times cheaper than a
Jacobian when one or a few directions are wanted.

The prompts run once up to ``layer`` (:meth:`SuffixRun.layer_outputs`, the prefix cached once);
every point then resumes after ``layer`` (:meth:`SuffixRun.forward_from`), its subject column replaced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lre_pl.dataset.prompts import EncodedPrompt
from lre_pl.lm.jacobian import SPLIT_PREFIX_ATTENTION, _attention_implementation
from lre_pl.lm.models import LanguageModel
from lre_pl.lm.suffix import SuffixRun, fork_cache

Layer = int | str


@dataclass(frozen=True)
class DirectionalProducts:
    """o and J v at the points of a batch of prompts."""

    outputs: torch.Tensor  # [n, P, d] o(x) at each point x
    products: torch.Tensor  # [n, P, T, d] J(x) v for each tangent v of each point


def with_subject(hidden: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """``hidden`` [rows, suffix, d] with its subject column (column 0) replaced by ``state`` [rows, d]."""
    return torch.cat([state[:, None], hidden[:, 1:]], dim=1)


#: On a CPU, passes of about this many products (points x tangents): wide matrix products at a bounded
#: working set. Not tuned.
CPU_PRODUCTS_PER_PASS = 1024


def points_per_pass(lm: LanguageModel, run: SuffixRun, tangents: int) -> int:
    """Points per forward-mode pass (each with all ``tangents``): what fits in a quarter of the free
    memory and, on a CPU, about :data:`CPU_PRODUCTS_PER_PASS` products."""
    d, itemsize = lm.hidden_size, lm.dtype.itemsize
    fastest = None if lm.device.type == "cuda" else max(1, CPU_PRODUCTS_PER_PASS // tangents)
    # A product holds a primal and a tangent copy of a block's activations at every suffix token; a
    # point also holds its own copy of the prefix's key/value cache (every layer's keys and values).
    per_product = 4 * run.suffix_tokens * (8 * d + 2 * lm.intermediate_size) * itemsize
    per_point = 2 * lm.num_blocks * d * run.prefix_width * itemsize + tangents * per_product
    fits = max(1, int(0.25 * lm.free_memory / per_point))
    return fits if fastest is None else min(fits, fastest)


def directional_products(
    lm: LanguageModel,
    prompts: Sequence[EncodedPrompt],
    layer: Layer,
    points: torch.Tensor,
    tangents: torch.Tensor,
    chunk_size: int | None = None,
) -> DirectionalProducts:
    """o(x) and J(x) v with each point x written as prompt i's subject state at ``layer``.

    Args:
        points: [n, P, d] P points per prompt (n = len(prompts)).
        tangents: [n, P, T, d] T tangents per point (an expanded view is not copied).
        chunk_size: points per pass, each with all its tangents; ``None`` sizes it from free memory
            and, on a CPU, the size that runs fastest (:func:`points_per_pass`).

    One pass runs a chunk of points, each a row of the suffix forward resumed after ``layer``, and
    ``vmap`` over the tangents of ``torch.func.jvp``: the primal forward of a point runs once for all
    its tangents (measured on SmolLM2 about ten times faster than a row per point and tangent).
    """
    layer = lm.check_layer(layer)
    n, count, d = points.shape
    tangent_count = tangents.shape[2]
    run = SuffixRun.prepare(lm, prompts)
    with torch.no_grad():
        hidden = run.layer_outputs([layer])[layer]  # [n, suffix, d]
    points = points.to(lm.device, lm.dtype).reshape(n * count, d)
    tangents = tangents.to(lm.device, lm.dtype).reshape(n * count, tangent_count, d)
    prompt_of_point = torch.arange(n, device=lm.device).repeat_interleave(count)  # [n P]
    outputs = torch.empty(n * count, d, device=lm.device, dtype=lm.dtype)
    products = torch.empty(n * count, tangent_count, d, device=lm.device, dtype=lm.dtype)
    chunk = chunk_size or points_per_pass(lm, run, tangent_count)
    for start in range(0, n * count, chunk):
        rows = slice(start, min(start + chunk, n * count))
        part, base = selected_rows(run, prompt_of_point[rows]), hidden[prompt_of_point[rows]]

        def output_at(state: torch.Tensor, part=part, base=base) -> torch.Tensor:  # [rows, d] -> o [rows, d]
            return part.forward_from(layer, with_subject(base, state))

        def product(tangent: torch.Tensor, state=points[rows], output_at=output_at):
            return torch.func.jvp(output_at, (state,), (tangent,))

        with torch.no_grad(), _attention_implementation(lm, SPLIT_PREFIX_ATTENTION):
            outputs[rows], products[rows] = torch.func.vmap(product, in_dims=1, out_dims=(None, 1))(
                tangents[rows]
            )
    return DirectionalProducts(outputs.reshape(n, count, d), products.reshape(n, count, tangent_count, d))


def selected_rows(run: SuffixRun, rows: torch.Tensor) -> SuffixRun:
    """The batch whose row r is row ``rows[r]`` of ``run`` (rows may repeat), with its own cache fork."""
    cache = fork_cache(run.cache) if run.cache is not None else None
    if cache is not None:
        cache.batch_select_indices(rows)
    tensors = (run.input_ids, run.attention_mask, run.position_ids)
    return SuffixRun(run.lm, *(t[rows] for t in tensors), run.prefix_width, run.last_index[rows], cache)
