"""Samplers, checked against denoisers whose answer is known in closed form (`minidiff.course.oracles`), for
diffusion and for the straight-line flow: one loop, one set of update rules, two processes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff.corruption import Diffusion, cosine_schedule
from minidiff.course.oracles import GaussianFlowOracle, GaussianOracle, exact_ode_solution
from minidiff.flows import StraightFlow
from minidiff.sampling import (SamplerSettings, ddim_step, dynamic_threshold, guided_output, karras_noise_to_signal,
                               noise_levels, sample, spacing_of)

DATA_STD = 0.3  # small enough that clipping x0 to [-1, 1] never matters
ORACLES = {"diffusion": GaussianOracle, "flow": GaussianFlowOracle}


def oracle_sample(oracle, batch, seed=0, keep_trajectory=False, **settings):
    """Samples of the oracle (which ignores captions) from batch x 4 x 4 x 3 noise drawn from `seed`."""
    noise_key, key = jax.random.split(jax.random.key(seed))
    noise = jax.random.normal(noise_key, (batch, 4, 4, 3))
    ids = jnp.ones((batch, 4), jnp.int32)
    settings = dict(guidance=1.0) | settings
    return noise, sample(oracle, oracle.process, noise, ids, ids, key, keep_trajectory=keep_trajectory, **settings)


@pytest.mark.parametrize("process", ["diffusion", "flow"])
@pytest.mark.parametrize("sampler, eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0), ("heun", 0.0), ("dpm++2m", 0.0)])
def test_samplers_converge_to_the_data_distribution(process, sampler, eta):
    """With many steps the samples have the data's spread; with fewer, a discretisation error remains
    and it shrinks as the steps grow, until it is below what 512 samples can tell (about 1 %). Every
    sampler, on both processes."""
    relative_error = {}
    for steps in (20, 100, 500):
        _, images = oracle_sample(ORACLES[process](DATA_STD), 512, sampling_steps=steps, sampler=sampler, eta=eta)
        assert images.shape == (512, 4, 4, 3)
        assert float(images.mean()) == pytest.approx(0.0, abs=0.02)
        relative_error[steps] = abs(float(images.std()) / DATA_STD - 1)
    floor = 0.01
    assert relative_error[500] < 0.02 and relative_error[20] < 0.25, relative_error
    assert relative_error[500] < max(relative_error[100], floor), relative_error
    assert relative_error[100] < max(relative_error[20], floor), relative_error


def ode_error(process: str, sampler: str, steps: int, spacing=None, std: float = 0.2) -> float:
    """The largest distance between where a deterministic sampler carries noise and where the exact
    probability-flow ODE does, from the sampler's first level."""
    oracle = ORACLES[process](std)
    settings = SamplerSettings(sampler=sampler, sampling_steps=steps, spacing=spacing)
    noise, images = oracle_sample(oracle, 64, sampler=sampler, sampling_steps=steps, spacing=spacing)
    _, alpha, sigma = noise_levels(oracle.process, settings)
    start = noise * np.sqrt(alpha[0] ** 2 + sigma[0] ** 2)
    return float(jnp.max(jnp.abs(images - exact_ode_solution(start, alpha[0], sigma[0], std))))


@pytest.mark.parametrize("process", ["diffusion", "flow"])
@pytest.mark.parametrize("sampler, order", [("ddim", 1), ("heun", 2), ("dpm++2m", 2)])
def test_ode_samplers_converge_at_their_order(process, sampler, order):
    """The deterministic samplers solve the probability-flow ODE, whose solution for Gaussian
    data is known. Doubling the steps must divide the error by 2^order. Measured on Karras's levels,
    which start at a finite noise level: from a flow's pure noise (t = 1) the first step spans an
    infinite range of log(alpha / sigma), and DPM-Solver++'s global error is then first order."""
    error = {steps: ode_error(process, sampler, steps, "karras") for steps in (40, 80)}
    measured_order = np.log2(error[40] / error[80])
    assert order - 0.3 < measured_order < order + 0.7, (error, measured_order)


def test_each_process_has_its_own_levels_for_second_order_solvers():
    """Karras's levels suit diffusion's curved paths; uniform steps in t a flow's straight ones: on each
    process's oracle, the default is the better of the two at 20 steps."""
    for process, better, worse in (("diffusion", "karras", "uniform"), ("flow", "uniform", "karras")):
        assert spacing_of(ORACLES[process].process, SamplerSettings(sampler="heun")) == better
        assert spacing_of(ORACLES[process].process, SamplerSettings(sampler="ddim")) == "uniform"
        assert ode_error(process, "heun", 20, better) < ode_error(process, "heun", 20, worse)


def test_noise_levels():
    """Uniform steps run from t = 1 to 1 / N (trailing); Karras levels from sigma / alpha = 80 down to the
    process's least noisy level, evenly spaced in (sigma / alpha)^(1/7); alpha and sigma are the process's."""
    diffusion, flow = Diffusion(), StraightFlow()
    t, alpha, sigma = noise_levels(diffusion, SamplerSettings(sampling_steps=5))
    np.testing.assert_allclose(t, [1.0, 0.8, 0.6, 0.4, 0.2])
    np.testing.assert_allclose(alpha**2, np.asarray(cosine_schedule(1000).alpha_bar, np.float64)[[999, 799, 599, 399, 199]],
                               rtol=1e-5)
    t, alpha, sigma = noise_levels(flow, SamplerSettings(sampling_steps=4))
    np.testing.assert_allclose(t, [1.0, 0.75, 0.5, 0.25])
    np.testing.assert_allclose(alpha, 1 - t) and np.testing.assert_allclose(sigma, t)
    for process in (diffusion, flow):
        t, alpha, sigma = noise_levels(process, SamplerSettings(sampler="dpm++2m", sampling_steps=6, spacing="karras"))
        ratios = sigma / alpha
        assert ratios[0] == pytest.approx(80.0, rel=1e-6)
        assert ratios[-1] == pytest.approx(float(np.divide(*process.alpha_sigma(process.t_min)[::-1])), rel=1e-6)
        np.testing.assert_allclose(np.diff(ratios ** (1 / 7)), np.diff(ratios ** (1 / 7))[0], rtol=1e-4)
        assert np.all(np.diff(t) < 0) and 0 < t[-1] < t[0] < 1
    np.testing.assert_allclose(karras_noise_to_signal(0.002, 80.0, 2), [80.0, 0.002])
    counts = [SamplerSettings(sampler=s, sampling_steps=10).network_calls for s in ("ddpm", "ddim", "heun", "dpm++2m")]
    assert counts == [10, 10, 19, 10]


def test_a_ddim_step_is_an_euler_step_of_the_flow():
    """On the straight path x_t = (1 - t) x0 + t eps, DDIM's x_s = alpha_s x0 + sigma_s eps is x_t + (s - t) v
    with v = eps - x0: following the velocity for the whole step."""
    x, x0_pred = jax.random.normal(jax.random.key(2), (2, 2, 4, 4, 3))
    t, s = 0.7, 0.4
    eps_pred = (x - (1 - t) * x0_pred) / t
    velocity = eps_pred - x0_pred
    ddim = ddim_step(jax.random.key(0), x0_pred, eps_pred, 1 - t, t, 1 - s, s, eta=0.0)
    np.testing.assert_allclose(ddim, x + (s - t) * velocity, atol=1e-5)


def test_heun_on_the_flow_is_heuns_method_in_t():
    """Three levels (t = 1, 2/3, 1/3) on the flow oracle: two Heun steps of dx/dt = v written out by hand, each a
    trial Euler step and then the average of the two velocities (finite from pure noise on), then the x0
    prediction at t = 1/3."""
    oracle = GaussianFlowOracle(DATA_STD)
    noise, images = oracle_sample(oracle, 8, sampler="heun", sampling_steps=3, x0_clipping="none")
    velocity = lambda x, t: oracle.denoise(x, jnp.full((8,), t), None)  # noqa: E731
    x = noise
    for t, s in ((1.0, 2 / 3), (2 / 3, 1 / 3)):
        trial = x + (s - t) * velocity(x, t)
        x = x + (s - t) * 0.5 * (velocity(x, t) + velocity(trial, s))
    np.testing.assert_allclose(images, x - velocity(x, 1 / 3) / 3, atol=1e-5)


def test_ddpm_is_ddim_with_eta_one():
    """The same draws: DDPM's posterior sample is DDIM's step with eta = 1."""
    _, ddpm = oracle_sample(GaussianOracle(DATA_STD), 16, sampler="ddpm", sampling_steps=10)
    _, ddim = oracle_sample(GaussianOracle(DATA_STD), 16, sampler="ddim", eta=1.0, sampling_steps=10)
    np.testing.assert_allclose(ddpm, ddim, atol=1e-6)


def test_static_clipping_keeps_x0_in_the_image_range_and_none_leaves_it():
    """For data of std 2, far outside [-1, 1], clipping each x0 prediction bounds the samples,
    and without it the sampler reaches the data's spread (latents have no [-1, 1] range)."""
    _, clipped = oracle_sample(GaussianOracle(2.0), 512, sampling_steps=100, x0_clipping="static")
    _, free = oracle_sample(GaussianOracle(2.0), 512, sampling_steps=100, x0_clipping="none")
    assert float(jnp.abs(clipped).max()) <= 1.0
    assert float(free.std()) == pytest.approx(2.0, rel=0.05) and float(jnp.abs(free).max()) > 4.0


def test_dynamic_thresholding_scales_an_overshooting_image_and_leaves_one_in_range():
    """Image 0: 498 pixels at 0.75, 498 at -1.5 and 4 outliers at 10 (under half a percent), so its
    99.5th percentile of |x| is s = 1.5: clip to [-1.5, 1.5], divide by 1.5. Image 1 is within [-1, 1]
    (s <= 1): unchanged."""
    overshooting = np.concatenate([np.full(498, 0.75), np.full(498, -1.5), np.full(4, 10.0)])
    in_range = np.linspace(-0.9, 0.9, 1000)
    x0 = jnp.asarray(np.stack([overshooting, in_range]).reshape(2, 10, 10, 10), jnp.float32)
    out = np.asarray(dynamic_threshold(x0)).reshape(2, -1)
    expected = np.concatenate([np.full(498, 0.5), np.full(498, -1.0), np.full(4, 1.0)])
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    np.testing.assert_allclose(out[1], in_range, rtol=1e-6)


def test_dynamic_thresholding_bounds_samples_without_saturating_them():
    """For data of std 2, both keep samples in [-1, 1]; static clipping piles them at +-1, dynamic
    thresholding scales them back instead, so few sit there."""
    _, static = oracle_sample(GaussianOracle(2.0), 512, sampling_steps=100, x0_clipping="static")
    _, dynamic = oracle_sample(GaussianOracle(2.0), 512, sampling_steps=100, x0_clipping="dynamic")
    assert float(jnp.abs(dynamic).max()) <= 1.0 + 1e-6
    saturated = lambda x: float(jnp.mean(jnp.abs(x) >= 1.0 - 1e-3))  # noqa: E731
    assert saturated(static) > 0.3 and saturated(dynamic) < 0.05, (saturated(static), saturated(dynamic))


def test_the_trajectory_holds_each_level_and_its_prediction():
    noise, (images, trajectory) = oracle_sample(GaussianOracle(DATA_STD), 2, sampling_steps=3, keep_trajectory=True)
    assert trajectory.xt.shape == trajectory.x0.shape == (3, 2, 4, 4, 3)
    np.testing.assert_array_equal(trajectory.x0[-1], images)
    np.testing.assert_allclose(trajectory.xt[0], noise, rtol=1e-6)  # a variance-preserving start: the noise itself


def test_guidance_one_is_conditional_and_zero_unconditional(model, tokenizer):
    model.denoiser.out.kernel[...] = 0.05 * jnp.ones_like(model.denoiser.out.kernel[...])  # make outputs nonzero
    xt = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    t = jnp.array([0.3, 0.8])
    caption = model.encode_captions(jnp.asarray(tokenizer.encode_batch(["a red flower", "a blue bird"])))
    empty = model.encode_captions(jnp.asarray(tokenizer.empty(2)))
    conditional = model.denoise(xt, t, caption)
    unconditional = model.denoise(xt, t, empty)
    assert not np.allclose(conditional, unconditional)
    for scale, expected in ((1.0, conditional), (0.0, unconditional), (3.0, unconditional + 3 * (conditional - unconditional))):
        np.testing.assert_allclose(guided_output(model, xt, t, caption, empty, scale, guided=True), expected, atol=1e-5)


@pytest.mark.parametrize("settings, message", [
    (dict(sampler="euler"), "unknown sampler"),
    (dict(sampling_steps=0), "at least 1"),
    (dict(sampling_steps=2.5), "whole number"),
    (dict(guidance=float("nan")), "finite"),
    (dict(guidance=float("inf")), "finite"),
    (dict(eta=-0.5), "eta"),
    (dict(eta=float("nan")), "eta"),
    (dict(sampler="heun", eta=0.5), "eta is DDIM's noise"),
    (dict(x0_clipping="percentile"), "unknown x0 clipping"),
    (dict(spacing="cosine"), "unknown spacing"),
])
def test_settings_no_sampler_can_run_are_clear_errors(settings, message):
    settings = dict(sampler="ddim", sampling_steps=10, guidance=3.0, eta=0.0, x0_clipping="static") | settings
    with pytest.raises(ValueError, match=message):
        SamplerSettings(**settings)
    with pytest.raises(ValueError, match=message):  # sample checks before it compiles anything
        oracle_sample(GaussianOracle(), 2, **settings)


def test_more_uniform_steps_than_the_process_has_levels_are_refused():
    """Diffusion was trained at T = 1000 steps: 1001 uniform levels would repeat one of them."""
    with pytest.raises(ValueError, match="take at most 1000"):
        oracle_sample(GaussianOracle(), 2, sampling_steps=1001)
