"""Straight-line flows (`minidiff.flows`): the path and its velocity, the time sampling, the process the
samplers take, and guidance and clipping on a flow whose exact velocity is known (`GaussianFlowOracle`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff.corruption import Diffusion
from minidiff.course.oracles import GaussianFlowOracle, PointCloudOracle, point_cloud_x0
from minidiff.flows import StraightFlow, interpolate, sample_times, velocity_target
from minidiff.sampling import sample


def test_the_path_runs_from_the_image_to_the_noise_at_the_velocity_eps_minus_x0():
    x0, eps = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 3))
    ends = jnp.array([0.0, 1.0, 0.5])
    np.testing.assert_array_equal(interpolate(x0, eps, ends)[0], x0[0])
    np.testing.assert_array_equal(interpolate(x0, eps, ends)[1], eps[1])
    t, h = jnp.full((3,), 0.3), 1e-2
    finite_difference = (interpolate(x0, eps, t + h) - interpolate(x0, eps, t - h)) / (2 * h)
    np.testing.assert_allclose(finite_difference, velocity_target(x0, eps), atol=1e-4)


def test_the_flow_as_a_process_is_alpha_one_minus_t_and_sigma_t():
    """x_t = alpha x0 + sigma eps with alpha = 1 - t, sigma = t: the straight path; the velocity converts back
    to x0 and eps; `time_of` inverts sigma / alpha; every error weighs the same."""
    process = StraightFlow()
    x0, eps = jax.random.normal(jax.random.key(1), (2, 3, 4, 4, 3))
    t, alpha, sigma = process.training_times(jax.random.key(2), 3)
    np.testing.assert_allclose(alpha, 1 - t) and np.testing.assert_allclose(sigma, t)
    xt = interpolate(x0, eps, t)
    back_x0, back_eps = process.x0_and_eps(process.target(x0, eps, alpha, sigma), xt, alpha, sigma)
    np.testing.assert_allclose(back_x0, x0, atol=1e-5)
    np.testing.assert_allclose(back_eps, eps, atol=1e-5)
    times = np.array([0.01, 0.3, 0.9])
    a, s = process.alpha_sigma(times)
    np.testing.assert_allclose(process.time_of(s / a), times, rtol=1e-12)
    np.testing.assert_array_equal(process.loss_weight(alpha, sigma), jnp.ones(3))
    with pytest.raises(ValueError, match="time_sampling must be one of"):
        StraightFlow(time_sampling="beta")


def test_training_times_follow_their_distributions():
    """Logit-normal(0, 1): median 1/2, standard deviation 0.208 (numerically integrated), and
    P(1/4 < t < 3/4) = P(|n| < log 3) = 0.728 of the normal n, against uniform's 1/2; uniform: mean 1/2,
    standard deviation 1/sqrt(12)."""
    logit_normal = np.asarray(sample_times(jax.random.key(0), 200_000, "logit_normal"))
    uniform = np.asarray(sample_times(jax.random.key(1), 200_000, "uniform"))
    assert 0 < logit_normal.min() and logit_normal.max() < 1
    assert abs(np.median(logit_normal) - 0.5) < 0.005 and abs(logit_normal.std() - 0.2083) < 0.003
    assert abs(uniform.mean() - 0.5) < 0.005 and abs(uniform.std() - 12**-0.5) < 0.003
    middle = lambda t: np.mean((t > 0.25) & (t < 0.75))  # noqa: E731
    assert abs(middle(logit_normal) - 0.728) < 0.005 and abs(middle(uniform) - 0.5) < 0.005
    with pytest.raises(ValueError, match="unknown time sampling 'beta'"):
        sample_times(jax.random.key(0), 4, "beta")


class CaptionedFlowOracle(GaussianFlowOracle):
    """The Gaussian flow's velocity, plus the caption's mean id: a caption the guidance can act on."""

    def encode_captions(self, token_ids):
        return (token_ids.astype(jnp.float32),)

    def denoise(self, xt, t, caption):
        return super().denoise(xt, t, caption) + caption[0].mean(axis=1).reshape(-1, 1, 1, 1)


def test_guidance_and_clipping_act_on_the_velocity_as_computed_by_hand():
    """Two DDIM (Euler) steps (t = 1 -> 1/2 -> the x0 prediction at 1/2), guided: v = v_empty + w (v_caption -
    v_empty), here the oracle's velocity + w (the caption adds 1, the empty caption 0); static clipping bounds
    the x0 prediction and steps with the velocity that leads to it."""
    oracle, w = CaptionedFlowOracle(2.0), 3.0  # data far outside [-1, 1]
    noise = jax.random.normal(jax.random.key(4), (16, 4, 4, 3))
    ones, zeros = jnp.ones((16, 2), jnp.int32), jnp.zeros((16, 2), jnp.int32)

    def guided(x, t):
        return GaussianFlowOracle(2.0).denoise(x, jnp.full((16,), t), None) + w

    def by_hand(clip):
        x0 = clip(noise - 1.0 * guided(noise, 1.0))
        x_half = noise + (0.5 - 1.0) * (noise - x0) / 1.0
        return clip(x_half - 0.5 * guided(x_half, 0.5))

    flow = oracle.process
    free = sample(oracle, flow, noise, ones, zeros, sampling_steps=2, guidance=w, x0_clipping="none")
    np.testing.assert_allclose(free, by_hand(lambda x: x), atol=1e-5)
    clipped = sample(oracle, flow, noise, ones, zeros, sampling_steps=2, guidance=w, x0_clipping="static")
    np.testing.assert_allclose(clipped, by_hand(lambda x: jnp.clip(x, -1, 1)), atol=1e-5)
    assert float(jnp.abs(free).max()) > 1.5  # the clipping had something to do
    with pytest.raises(ValueError, match="one row per image"):
        sample(oracle, flow, noise[:3], ones, zeros)


def test_the_point_cloud_oracle_is_the_exact_denoiser_of_a_few_points():
    """The posterior mean is a softmax over the points; with one point it is that point, and the flow's velocity
    (x - point) / t; both samplers carry any noise onto it."""
    rng = np.random.default_rng(0)
    points, x = rng.normal(size=(3, 2)), rng.normal(size=(5, 2))
    signal, noise = 0.6, 0.8
    weights = np.exp(-((x[:, None] - signal * points[None]) ** 2).sum(-1) / (2 * noise**2))
    expected = (weights / weights.sum(1, keepdims=True)) @ points
    np.testing.assert_allclose(point_cloud_x0(jnp.asarray(x), jnp.asarray(points), signal, noise), expected, atol=1e-5)

    point = jnp.array([[0.5, -0.25]])
    starts = jnp.asarray(rng.normal(size=(6, 1, 1, 2)), jnp.float32)
    t = jnp.full((6,), 0.4)
    flow, diffusion = PointCloudOracle(point, StraightFlow()), PointCloudOracle(point, Diffusion(prediction="x0"))
    np.testing.assert_allclose(flow.denoise(starts, t, None), (starts - point[0]) / 0.4, atol=1e-5)
    np.testing.assert_allclose(diffusion.denoise(starts, t, None), jnp.broadcast_to(point[0], starts.shape), atol=1e-6)
    ids = jnp.zeros((6, 1), jnp.int32)
    for oracle in (flow, diffusion):
        images = sample(oracle, oracle.process, starts, ids, ids, sampling_steps=3, guidance=1.0, x0_clipping="none")
        np.testing.assert_allclose(images, jnp.broadcast_to(point[0], starts.shape), atol=1e-5)
