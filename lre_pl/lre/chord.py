"""The chord Jacobian: J averaged along the straight lines between training subjects' states.

The LRE's W is the mean of the local Jacobians J(s_i), the tangents at the real subject states. Where
the map s -> o saturates (flat at the real states, steep between them), a tangent underestimates the
slope between two subjects, the secant, and a readout with W needs a β > 1 to reach the objects. The
chord Jacobian averages J over the segments between training subjects instead:

    W_chord = mean over ordered pairs i != j of  sum_k w_k J_i(s_i + α_k (s_j - s_i))

with Gauss–Legendre nodes α_k and weights w_k on [0, 1] and J_i taken in prompt i. By the
fundamental theorem of calculus, sum_k w_k J_i(s(α_k)) Δs ≈ o_i(s_j) − o_i(s_i): along each training
segment W_chord's average carries the whole output change, which no local Jacobian promises.

The segments run between REAL subject states, never from zero: where o depends on s through a
normalised direction (a norm at the start of every block), o is 0-homogeneous in s, so
J(α s) s = 0 (Euler's theorem) and a path from 0 carries nothing.

Only W_chord applied to vectors is ever needed (W_chord s for test states, W_chord s_i for b): the
products path (:meth:`ChordOperator.apply`) runs forward-mode products at the chord's points and
never forms W_chord; :meth:`ChordOperator.form` forms it (d products per point) for what needs the
matrix itself (a pseudo-inverse).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lre_pl.dataset.prompts import EncodedPrompt
from lre_pl.errors import InputError
from lre_pl.lm.directional import DirectionalProducts, directional_products
from lre_pl.lm.models import LanguageModel

Layer = int | str


def gauss_legendre(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(nodes [count], weights [count]) of the ``count``-point Gauss–Legendre rule on [0, 1], float64.

    Exact for polynomials of degree up to 2 count - 1; the weights sum to 1, so a weighted sum is a mean.
    """
    if count < 1:
        raise InputError(f"quadrature_nodes={count} must be at least 1")
    nodes, weights = np.polynomial.legendre.leggauss(count)  # on [-1, 1]
    return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)


def chord_points(states: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """[n, (n - 1) A, d]: for prompt i, s_i + α (s_j − s_i) for every j != i (in order) and α of ``alphas`` [A].

    ``states`` [n, d] are the real subject states s_i.
    """
    steps = chord_steps(states)  # [n, n - 1, d]
    points = states[:, None, None] + alphas.to(states)[None, None, :, None] * steps[:, :, None]
    return points.flatten(1, 2)  # [n, n - 1, A, d] -> [n, (n - 1) A, d]


def chord_steps(states: torch.Tensor) -> torch.Tensor:
    """[n, n - 1, d]: Δs_ij = s_j − s_i for every j != i (in order) of ``states`` [n, d]."""
    n = len(states)
    others = torch.tensor([[j for j in range(n) if j != i] for i in range(n)], dtype=torch.long).reshape(
        n, n - 1
    )
    return states[others] - states[:, None]


ProductsAt = Callable[[torch.Tensor, torch.Tensor], DirectionalProducts]
"""(points [n, P, d], tangents [n, P, T, d]) -> o and J_i v at the points, J_i the Jacobian in prompt i
(:func:`~lre_pl.lm.directional.directional_products` of a model; any map's in a test)."""


@dataclass(frozen=True)
class ChordOperator:
    """W_chord of one layer's training samples, as products (:meth:`apply`) or formed (:meth:`form`)."""

    products_at: ProductsAt
    subject_states: torch.Tensor  # [n, d] s_i
    output_states: torch.Tensor  # [n, d] o_i
    nodes: torch.Tensor  # [K] Gauss–Legendre nodes α_k on [0, 1]
    weights: torch.Tensor  # [K] their weights (sum 1)

    def along_segments(self, alphas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(o [n, n - 1, A, d], J Δs [n, n - 1, A, d]) at s_i + α Δs_ij for every α of ``alphas`` [A]:
        each segment's output and its derivative along itself (one product per point)."""
        n, d = self.subject_states.shape
        steps = chord_steps(self.subject_states)[:, :, None].expand(
            n, n - 1, len(alphas), d
        )  # [n, n - 1, A, d]
        result = self.products_at(chord_points(self.subject_states, alphas), steps.reshape(n, -1, 1, d))
        return result.outputs.reshape(n, n - 1, len(alphas), d), result.products.reshape(
            n, n - 1, len(alphas), d
        )

    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        """W_chord v [m, d] for ``vectors`` [m, d]: every vector a tangent at every point, in one batched
        pass; W_chord is never formed."""
        n = len(self.subject_states)
        points = chord_points(self.subject_states, self.nodes)  # [n, (n - 1) K, d]
        tangents = vectors[None, None].expand(*points.shape[:2], *vectors.shape)  # a view: no copy
        products = self.products_at(points, tangents).products  # [n, (n - 1) K, m, d]
        # [(n - 1) K]: the weight of each of one prompt's points in the mean over pairs and nodes
        weights = self.weights.repeat(n - 1).to(products) / (n * (n - 1))
        return torch.einsum("q,nqmd->md", weights, products).to(vectors.dtype)

    def form(self) -> torch.Tensor:
        """W_chord [d, d], formed: the basis vectors applied (d forward-mode products at every point)."""
        d = self.subject_states.shape[-1]
        return self.apply(torch.eye(d, dtype=self.subject_states.dtype)).T

    def readout_parts(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_chord s [m, d] of ``states`` [m, d], b [d] = mean_i (o_i − W_chord s_i)), in one pass."""
        n = len(self.subject_states)
        projected = self.apply(torch.cat([self.subject_states, states]))
        return projected[n:], (self.output_states - projected[:n]).mean(0)


class ChordJacobian:
    """The chord estimator: ``ChordJacobian(nodes)(lm, prompts, layer, s, o)`` -> :class:`ChordOperator`.

    Like the estimators of :mod:`lre_pl.lre.estimators` a small class with one call, but it needs the
    model and the training prompts (J is taken at points no forward has seen), not only their statistics.
    """

    name = "chord"

    def __init__(self, nodes: int = 8, chunk_size: int | None = None):
        """``nodes``: Gauss–Legendre nodes per segment; ``chunk_size``: products per pass (``None``: auto)."""
        self.nodes, self.chunk_size = nodes, chunk_size
        gauss_legendre(nodes)  # a bad count fails here, not at the first product

    def __call__(
        self,
        lm: LanguageModel,
        prompts: Sequence[EncodedPrompt],
        layer: Layer,
        subject_states: torch.Tensor,
        output_states: torch.Tensor,
    ) -> ChordOperator:
        """The operator of training ``prompts`` whose subject states at ``layer`` are ``subject_states``
        [n, d] and outputs ``output_states`` [n, d] (n >= 2: a chord needs two subjects)."""
        if len(prompts) < 2:
            raise InputError(f"the chord Jacobian needs at least 2 training samples, got {len(prompts)}")
        nodes, weights = gauss_legendre(self.nodes)
        products_at = functools.partial(
            directional_products, lm, list(prompts), layer, chunk_size=self.chunk_size
        )
        return ChordOperator(products_at, subject_states.float(), output_states.float(), nodes, weights)

    def __repr__(self) -> str:
        return f"ChordJacobian(nodes={self.nodes})"
