"""Each estimator against its closed form (independent formulas, not the estimator's own code path)."""

import pytest
import torch

from lre_pl.lre.estimators import Identity, JacobianMean, LinearRegression, TrainingStatistics, Translation


def _statistics(n=5, d=16, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    s = scale * torch.randn(n, d, generator=generator, dtype=torch.float64)
    o = torch.randn(n, d, generator=generator, dtype=torch.float64)
    return TrainingStatistics(s, o)


def test_translation_is_identity_plus_the_mean_offset():
    stats = _statistics()
    weight, bias = Translation()(stats)
    torch.testing.assert_close(weight, torch.eye(16, dtype=torch.float64))
    torch.testing.assert_close(bias, (stats.output_states - stats.subject_states).mean(0))


def test_identity_decodes_s_itself():
    stats = _statistics()
    weight, bias = Identity()(stats)
    torch.testing.assert_close(stats.subject_states @ weight.T + bias, stats.subject_states)


def test_jacobian_mean_passes_the_means_through_and_needs_them():
    stats = _statistics()
    jacobian, bias = torch.randn(16, 16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    full = TrainingStatistics(stats.subject_states, stats.output_states, jacobian, bias)
    assert JacobianMean()(full) == (jacobian, bias) and JacobianMean.needs_jacobians
    assert not any(e.needs_jacobians for e in (Translation(), Identity(), LinearRegression()))
    with pytest.raises(ValueError, match="needs the mean Jacobian"):
        JacobianMean()(stats)


@pytest.mark.parametrize(
    ("n", "d"), [(5, 16), (40, 8)]
)  # underdetermined (the LRE's case) and overdetermined
def test_linear_regression_is_the_primal_ridge_solution(n, d):
    stats = _statistics(n, d)
    ridge = 0.05
    weight, bias = LinearRegression(ridge)(stats)
    s, o = stats.subject_states, stats.output_states
    s_c, o_c = s - s.mean(0), o - o.mean(0)
    penalty = ridge * (s_c**2).sum() / n
    # Primal normal equations: W (S_c^T S_c + lambda I_d) = O_c^T S_c.
    expected = torch.linalg.solve(s_c.T @ s_c + penalty * torch.eye(d, dtype=s.dtype), s_c.T @ o_c).T
    torch.testing.assert_close(weight, expected)
    torch.testing.assert_close(bias, o.mean(0) - expected @ s.mean(0))


def test_linear_regression_recovers_an_exact_affine_map():
    generator = torch.Generator().manual_seed(3)
    true_weight, true_bias = torch.randn(6, 6, generator=generator), torch.randn(6, generator=generator)
    s = torch.randn(50, 6, generator=generator)
    stats = TrainingStatistics(s, s @ true_weight.T + true_bias)
    weight, bias = LinearRegression(ridge=1e-9)(stats)
    torch.testing.assert_close(weight, true_weight, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bias, true_bias, atol=1e-4, rtol=1e-4)


def test_linear_regression_ridge_is_relative_to_the_scale_of_s():
    small, large = _statistics(scale=1.0), _statistics(scale=1000.0)
    w_small, b_small = LinearRegression(0.1)(small)
    w_large, b_large = LinearRegression(0.1)(large)
    # The same fit: predictions on the training states agree whatever the residual stream's scale.
    torch.testing.assert_close(
        small.subject_states @ w_small.T + b_small, large.subject_states @ w_large.T + b_large
    )


def test_a_negative_ridge_is_refused_and_reprs_name_the_arguments():
    from lre_pl.errors import InputError

    with pytest.raises(InputError, match="ridge=-1 must be non-negative"):
        LinearRegression(-1)
    assert (
        repr(LinearRegression(0.5)) == "LinearRegression(ridge=0.5)"
        and repr(Translation()) == "Translation()"
    )
    assert LinearRegression(0.5) == LinearRegression(0.5) != LinearRegression(0.1)


def test_zero_ridge_is_minimum_norm_least_squares():
    generator = torch.Generator().manual_seed(3)
    true_weight, true_bias = torch.randn(6, 6, generator=generator), torch.randn(6, generator=generator)
    s = torch.randn(50, 6, generator=generator)
    weight, bias = LinearRegression(ridge=0)(TrainingStatistics(s, s @ true_weight.T + true_bias))
    torch.testing.assert_close(weight, true_weight, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bias, true_bias, atol=1e-4, rtol=1e-4)
    few = _statistics(n=5, d=16)  # underdetermined: the fit interpolates with the smallest W
    weight, bias = LinearRegression(ridge=0)(few)
    s_c = few.subject_states - few.subject_states.mean(0)
    o_c = few.output_states - few.output_states.mean(0)
    torch.testing.assert_close(weight, (torch.linalg.pinv(s_c) @ o_c).T)  # min-norm W with S_c W^T = O_c
