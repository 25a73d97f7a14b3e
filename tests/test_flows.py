"""Straight-line flows (`minidiff.flows`): the path and its velocity, the time sampling, and the
Euler and Heun samplers against a flow whose exact velocity is known (`GaussianFlowOracle`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff.corruption import cosine_schedule
from minidiff.course.oracles import GaussianFlowOracle, PointCloudOracle, point_cloud_x0
from minidiff.flows import euler_step, interpolate, sample, sample_times, velocity_target, x0_and_eps_from_velocity
from minidiff.sampling import ddim_step, function_evaluations
from minidiff.sampling import sample as diffusion_sample


def test_the_path_runs_from_the_image_to_the_noise_at_the_velocity_eps_minus_x0():
    x0, eps = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 3))
    ends = jnp.array([0.0, 1.0, 0.5])
    np.testing.assert_array_equal(interpolate(x0, eps, ends)[0], x0[0])
    np.testing.assert_array_equal(interpolate(x0, eps, ends)[1], eps[1])
    t, h = jnp.full((3,), 0.3), 1e-2
    finite_difference = (interpolate(x0, eps, t + h) - interpolate(x0, eps, t - h)) / (2 * h)
    np.testing.assert_allclose(finite_difference, velocity_target(x0, eps), atol=1e-4)
    back_x0, back_eps = x0_and_eps_from_velocity(interpolate(x0, eps, t), velocity_target(x0, eps), t)
    np.testing.assert_allclose(back_x0, x0, atol=1e-5)
    np.testing.assert_allclose(back_eps, eps, atol=1e-5)


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


def test_an_euler_step_on_the_straight_path_is_a_ddim_step():
    """x_t / sqrt((1 - t)^2 + t^2) is a variance-preserving x_t with alpha_bar = (1 - t)^2 / ((1 - t)^2 + t^2):
    given the same x0 prediction, DDIM's step there and Euler's step here land on the same point."""
    x, x0_pred = jax.random.normal(jax.random.key(2), (2, 2, 4, 4, 3))
    t, s = 0.7, 0.4
    scale = lambda u: ((1 - u) ** 2 + u**2) ** 0.5  # noqa: E731
    alpha_bar = lambda u: (1 - u) ** 2 / scale(u) ** 2  # noqa: E731
    velocity = (x - x0_pred) / t  # the velocity whose x0 prediction is x0_pred
    np.testing.assert_allclose(x0_and_eps_from_velocity(x, velocity, jnp.full((2,), t))[0], x0_pred, atol=1e-5)
    euler = euler_step(x, velocity, t, s)
    x_vp = x / scale(t)
    eps_pred = (x_vp - alpha_bar(t) ** 0.5 * x0_pred) / (1 - alpha_bar(t)) ** 0.5
    ddim = ddim_step(jax.random.key(0), x_vp, x0_pred, eps_pred, alpha_bar(t), alpha_bar(s), eta=0.0)
    np.testing.assert_allclose(ddim * scale(s), euler, atol=1e-5)


def endpoint_error(sampler, steps, std=0.5):
    """The largest distance between where a sampler carries noise and where the exact flow does (std * noise)."""
    noise = jax.random.normal(jax.random.key(3), (8, 4, 4, 3))
    ids = jnp.zeros((8, 2), jnp.int32)
    images = sample(GaussianFlowOracle(std), noise, ids, ids, num_steps=steps, sampler=sampler, x0_clipping="none")
    return float(jnp.max(jnp.abs(images - std * noise)))


def test_euler_converges_at_first_order_and_heun_at_second():
    """Doubling the steps halves Euler's error and quarters Heun's (Heun's last step, which lands on t = 0,
    is an Euler step, of the same order as Heun's global error)."""
    euler = [endpoint_error("euler", n) for n in (8, 16, 32)]
    heun = [endpoint_error("heun", n) for n in (8, 16, 32)]
    for coarse, fine in zip(euler, euler[1:]):
        assert 1.7 < coarse / fine < 2.3, euler
    for coarse, fine in zip(heun, heun[1:]):
        assert 3.3 < coarse / fine < 4.7, heun
    assert heun[0] < euler[-1]  # 15 network calls of Heun beat 32 of Euler
    assert function_evaluations("euler", 8) == 8 and function_evaluations("heun", 8) == 15


class CaptionedFlowOracle(GaussianFlowOracle):
    """The Gaussian flow's velocity, plus the caption's mean id: a caption the guidance can act on."""

    def encode_captions(self, token_ids):
        return (token_ids.astype(jnp.float32),)

    def denoise(self, xt, t, caption):
        return super().denoise(xt, t, caption) + caption[0].mean(axis=1).reshape(-1, 1, 1, 1)


def test_guidance_and_clipping_act_on_the_velocity_as_computed_by_hand():
    """Two Euler steps (t = 1 -> 1/2 -> the x0 prediction at 1/2), guided: v = v_empty + w (v_caption - v_empty),
    here the oracle's velocity + w (the caption adds 1, the empty caption 0); static clipping bounds the x0
    prediction and steps with the velocity that leads to it."""
    oracle, w = CaptionedFlowOracle(2.0), 3.0  # data far outside [-1, 1]
    noise = jax.random.normal(jax.random.key(4), (16, 4, 4, 3))
    ones, zeros = jnp.ones((16, 2), jnp.int32), jnp.zeros((16, 2), jnp.int32)

    def guided(x, t):
        return GaussianFlowOracle(2.0).denoise(x, jnp.full((16,), t), None) + w

    def by_hand(clip):
        x0 = clip(noise - 1.0 * guided(noise, 1.0))
        x_half = noise + (0.5 - 1.0) * (noise - x0) / 1.0
        return clip(x_half - 0.5 * guided(x_half, 0.5))

    free = sample(oracle, noise, ones, zeros, num_steps=2, guidance_scale=w, x0_clipping="none")
    np.testing.assert_allclose(free, by_hand(lambda x: x), atol=1e-5)
    clipped = sample(oracle, noise, ones, zeros, num_steps=2, guidance_scale=w, x0_clipping="static")
    np.testing.assert_allclose(clipped, by_hand(lambda x: jnp.clip(x, -1, 1)), atol=1e-5)
    assert float(jnp.abs(free).max()) > 1.5  # the clipping had something to do
    with pytest.raises(ValueError, match="a flow model samples with one of"):
        sample(oracle, noise, ones, zeros, sampler="ddim")
    with pytest.raises(ValueError, match="one row per image"):
        sample(oracle, noise[:3], ones, zeros)


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
    flow, diffusion = PointCloudOracle(point, "flow"), PointCloudOracle(point, "diffusion")
    np.testing.assert_allclose(flow.denoise(starts, t, None), (starts - point[0]) / 0.4, atol=1e-5)
    np.testing.assert_allclose(diffusion.denoise(starts, t, None), jnp.broadcast_to(point[0], starts.shape), atol=1e-6)
    ids = jnp.zeros((6, 1), jnp.int32)
    for images in (sample(flow, starts, ids, ids, num_steps=3, x0_clipping="none"),
                   diffusion_sample(diffusion, cosine_schedule(1000), starts, ids, ids, num_steps=3,
                                    x0_clipping="none")):
        np.testing.assert_allclose(images, jnp.broadcast_to(point[0], starts.shape), atol=1e-5)
