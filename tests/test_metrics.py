"""FID, KID and IS statistics against closed forms."""

import numpy as np
import pytest

from minidiff.evaluation.metrics import (frechet_distance, frechet_distance_of, gaussian_statistics, inception_score,
                              kernel_distance, mmd_squared_unbiased, polynomial_kernel)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(500, 16)) @ np.random.default_rng(1).normal(size=(16, 16))
    assert frechet_distance_of(features, features) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_between_gaussians_is_the_analytic_value():
    # One dimension: (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2.
    assert frechet_distance([1.0], [[4.0]], [-0.5], [[0.25]]) == pytest.approx(1.5**2 + (2.0 - 0.5) ** 2)
    # Two dimensions with covariances that do not commute: for 2 x 2 matrices,
    # tr((S_a S_b)^1/2) = sqrt(tr(S_a S_b) + 2 sqrt(det(S_a S_b))).
    cov_a = np.array([[2.0, 0.6], [0.6, 1.0]])
    cov_b = np.array([[0.5, -0.3], [-0.3, 1.5]])
    product = cov_a @ cov_b
    trace_sqrt = np.sqrt(np.trace(product) + 2 * np.sqrt(np.linalg.det(product)))
    mean_a, mean_b = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    expected = 8.0 + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt
    assert frechet_distance(mean_a, cov_a, mean_b, cov_b) == pytest.approx(expected, rel=1e-10)
    # And estimated from samples, it approaches that value.
    rng = np.random.default_rng(0)
    a = rng.multivariate_normal(mean_a, cov_a, size=200_000)
    b = rng.multivariate_normal(mean_b, cov_b, size=200_000)
    assert frechet_distance_of(a, b) == pytest.approx(expected, rel=0.01)
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_statistics(np.ones((1, 3)))


def test_unbiased_mmd_matches_its_definition():
    """Brute force over distinct pairs, written out as loops."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(1.0, 1.0, size=(7, 3))
    k = lambda u, v: (u @ v / 3 + 1) ** 3  # noqa: E731
    within_x = np.mean([k(x[i], x[j]) for i in range(5) for j in range(5) if i != j])
    within_y = np.mean([k(y[i], y[j]) for i in range(7) for j in range(7) if i != j])
    across = np.mean([k(x[i], y[j]) for i in range(5) for j in range(7)])
    assert mmd_squared_unbiased(x, y) == pytest.approx(within_x + within_y - 2 * across, rel=1e-12)
    np.testing.assert_allclose(polynomial_kernel(x, y)[2, 3], k(x[2], y[3]))


def test_unbiased_mmd_is_unbiased_even_for_tiny_sets():
    """In one dimension, k(x, y) = (xy + 1)^3 = x^3 y^3 + 3 x^2 y^2 + 3 x y + 1, so for independent samples
    MMD^2 = (m3_P - m3_Q)^2 + 3 (m2_P - m2_Q)^2 + 3 (m1_P - m1_Q)^2 in the raw moments m_i. For P uniform on
    {-1, 1} (m = 0, 1, 0) and Q uniform on {0, 2} (m = 1, 2, 4): MMD^2 = 16 + 3 + 3 = 22. Unbiased means the
    estimate from sets of only 5 points averages to exactly that (keeping the diagonal would add about 7)."""
    rng = np.random.default_rng(0)
    draw = lambda values: rng.choice(values, size=(5, 1))  # noqa: E731
    estimates = [mmd_squared_unbiased(draw([-1.0, 1.0]), draw([0.0, 2.0])) for _ in range(10_000)]
    assert np.mean(estimates) == pytest.approx(22.0, rel=0.04)  # standard error about 1.2 %
    same = [mmd_squared_unbiased(draw([0.0, 2.0]), draw([0.0, 2.0])) for _ in range(10_000)]
    assert abs(np.mean(same)) < 4 * np.std(same) / np.sqrt(len(same))
    # kernel_distance averages the estimator over random subsets.
    p, q = rng.choice([-1.0, 1.0], size=(400, 1)), rng.choice([0.0, 2.0], size=(400, 1))
    mean, std = kernel_distance(p, q, num_subsets=10, subset_size=100)
    assert mean == pytest.approx(22.0, rel=0.2) and std > 0
    assert kernel_distance(p[:50], q[:50], subset_size=100)[1] == 0.0  # one estimate on the whole sets


def test_inception_score_of_uniform_and_confident_predictions():
    k = 10
    uniform = np.full((100, k), 1 / k)
    assert inception_score(uniform)[0] == pytest.approx(1.0)
    one_hot_spread = np.eye(k)[np.arange(200) % k]  # confident, every class equally often
    assert inception_score(one_hot_spread, num_splits=4)[0] == pytest.approx(k)
    one_class = np.eye(k)[np.zeros(100, int)]  # confident but never varied
    assert inception_score(one_class)[0] == pytest.approx(1.0)
    # Fewer images than parts: one image per part, nothing varies within a part (not NaN).
    assert inception_score(one_hot_spread[:3], num_splits=10) == (pytest.approx(1.0), pytest.approx(0.0))
    with pytest.raises(ValueError, match="sum to 1"):
        inception_score(np.ones((4, 3)))
