"""The chord Jacobian against independent computations: the fundamental theorem, W_chord formed from plain
autograd Jacobians, and a 0-homogeneous map on which a path from zero carries nothing."""

import pytest
import torch
from reference import full_forward_map, relative_error
from test_directional import prompts_of

from lre_pl.errors import InputError
from lre_pl.lm.directional import DirectionalProducts
from lre_pl.lre.chord import ChordJacobian, ChordOperator, chord_points, gauss_legendre

LAYER = 1


@pytest.fixture(scope="module")
def samples(llama):
    """(prompts, maps F_i, s [n, d], o [n, d]) of three tiny-Llama prompts, by plain full forwards."""
    prompts = prompts_of(llama)
    maps, states = zip(*[full_forward_map(llama, prompt, LAYER) for prompt in prompts])
    with torch.no_grad():
        outputs = torch.stack([function(state) for function, state in zip(maps, states)])
    return prompts, maps, torch.stack(states), outputs


def test_gauss_legendre_is_exact_on_polynomials_up_to_degree_2k_minus_1():
    nodes, weights = gauss_legendre(3)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-15)
    assert ((nodes > 0) & (nodes < 1)).all()
    for degree in range(6):
        assert (weights * nodes**degree).sum().item() == pytest.approx(1 / (degree + 1), abs=1e-14), degree
    assert (weights * nodes**6).sum().item() != pytest.approx(1 / 7, abs=1e-6)  # degree 2k is not exact
    with pytest.raises(InputError, match=r"^quadrature_nodes=0 must be at least 1$"):
        gauss_legendre(0)


def test_chord_points_lie_on_the_segments_between_real_states():
    states = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    points = chord_points(states, torch.tensor([0.0, 0.25, 1.0]))  # [3, 2 * 3, 2]
    expected_first = [[1.0, 0.0], [0.75, 0.5], [0.0, 2.0], [1.0, 0.0], [1.5, 0.75], [3.0, 3.0]]
    torch.testing.assert_close(points[0], torch.tensor(expected_first))
    torch.testing.assert_close(points[2, 3:], torch.tensor([[3.0, 3.0], [2.25, 2.75], [0.0, 2.0]]))


def test_the_quadrature_recovers_each_segment_s_output_change(llama, samples):
    """Fundamental theorem: sum_k w_k J_i(s(α_k)) Δs = F_i(s_j) − F_i(s_i), F_i a plain full forward."""
    prompts, maps, states, outputs = samples
    chord = ChordJacobian(nodes=12)(llama, prompts, LAYER, states, outputs)
    ends, _ = chord.along_segments(torch.tensor([0.0, 1.0]))  # o [n, n - 1, 2, d]
    _, slopes = chord.along_segments(chord.nodes)  # J Δs [n, n - 1, K, d]
    quadrature = torch.einsum("k,ijkd->ijd", chord.weights.float(), slopes)
    for i in range(3):
        others = [j for j in range(3) if j != i]
        with torch.no_grad():
            expected = torch.stack([maps[i](states[j]) for j in others]) - outputs[i]  # [n - 1, d]
        torch.testing.assert_close(ends[i, :, 0], outputs[i].expand(2, -1), atol=1e-5, rtol=1e-5)
        assert relative_error(ends[i, :, 1] - ends[i, :, 0], expected) < 1e-5
        assert relative_error(quadrature[i], expected) < 1e-4, i


def test_applied_w_chord_equals_w_chord_formed_from_autograd_jacobians(llama, samples):
    prompts, maps, states, outputs = samples
    chord = ChordJacobian(nodes=2)(llama, prompts, LAYER, states, outputs)
    formed = torch.zeros(llama.hidden_size, llama.hidden_size)  # W_chord by plain autograd, point by point
    for i in range(3):
        for j in (j for j in range(3) if j != i):
            for alpha, weight in zip(chord.nodes.tolist(), chord.weights.tolist()):
                point = states[i] + alpha * (states[j] - states[i])
                jacobian = torch.autograd.functional.jacobian(maps[i], point, vectorize=True)
                formed += weight * jacobian / 6
    vectors = torch.randn(5, llama.hidden_size, generator=torch.Generator().manual_seed(1))
    assert relative_error(chord.apply(vectors), vectors @ formed.T) < 1e-5
    assert relative_error(chord.form(), formed) < 1e-5
    projection, bias = chord.readout_parts(vectors)
    assert relative_error(projection, vectors @ formed.T) < 1e-5
    assert relative_error(bias, (outputs - states @ formed.T).mean(0)) < 1e-5


def test_the_chord_runs_between_real_states_not_from_zero():
    """On a 0-homogeneous map (o depends on s only through s / ‖s‖, like a block behind its norm), Euler's
    theorem makes J(α s) s = 0: a path from 0 to s_j carries nothing, while the chord from s_i to s_j
    carries F_i(s_j) − F_i(s_i)."""
    generator = torch.Generator().manual_seed(0)
    d, n = 6, 3
    mixes = torch.randn(n, d, d, generator=generator)  # one map per prompt

    def output(i: int, state: torch.Tensor) -> torch.Tensor:  # F_i(s) = A_i tanh(s / ‖s‖)
        return mixes[i] @ torch.tanh(state / state.norm())

    def products_at(points: torch.Tensor, tangents: torch.Tensor) -> DirectionalProducts:
        outputs, products = torch.empty_like(points), torch.empty_like(tangents)
        for i in range(n):
            for p in range(points.shape[1]):
                for t in range(tangents.shape[2]):
                    outputs[i, p], products[i, p, t] = torch.func.jvp(
                        lambda s, i=i: output(i, s), (points[i, p],), (tangents[i, p, t],)
                    )
        return DirectionalProducts(outputs, products)

    states = torch.randn(n, d, generator=generator) * 4
    nodes, weights = gauss_legendre(24)
    outputs = torch.stack([output(i, s) for i, s in enumerate(states)])
    chord = ChordOperator(products_at, states, outputs, nodes, weights)
    _, slopes = chord.along_segments(nodes)  # [n, n - 1, K, d]
    carried = torch.einsum("k,ijkd->ijd", weights.float(), slopes)
    expected = torch.stack([torch.stack([output(i, states[j]) - outputs[i] for j in range(n) if j != i])
                            for i in range(n)])  # fmt: skip
    assert expected.norm(dim=-1).min() > 1
    assert relative_error(carried, expected) < 1e-4
    from_zero = products_at(
        nodes.float()[None, :, None] * states[:, None], states[:, None, None].expand(n, 24, 1, d)
    )
    assert (torch.einsum("k,ikd->id", weights.float(), from_zero.products[:, :, 0]).norm(dim=-1) < 1e-5).all()


def test_a_chord_needs_two_training_samples(llama, samples):
    prompts, _, states, outputs = samples
    with pytest.raises(InputError, match=r"^the chord Jacobian needs at least 2 training samples, got 1$"):
        ChordJacobian()(llama, prompts[:1], LAYER, states[:1], outputs[:1])
