"""Samplers, checked against a denoiser whose answer is known in closed form (`minidiff.course.oracles`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff.corruption import cosine_schedule, network_time
from minidiff.course.oracles import GaussianOracle, exact_ode_solution
from minidiff.sampling import (check_settings, dynamic_threshold, function_evaluations, guided_output, karras_sigmas,
                               noise_levels, sample, sigma_from_alpha_bar, step_index_of, timestep_sequence)

DATA_STD = 0.3  # small enough that clipping x0 to [-1, 1] never matters


def oracle_sample(oracle, batch, seed=0, **settings):
    """Samples of the oracle (which ignores captions) from batch x 4 x 4 x 3 noise drawn from `seed`."""
    noise_key, key = jax.random.split(jax.random.key(seed))
    noise = jax.random.normal(noise_key, (batch, 4, 4, 3))
    ids = jnp.ones((batch, 4), jnp.int32)
    return noise, sample(oracle, cosine_schedule(1000), noise, ids, ids, key, **settings)


@pytest.mark.parametrize("sampler, eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0), ("heun", 0.0), ("dpm++2m", 0.0)])
def test_samplers_converge_to_the_data_distribution(sampler, eta):
    """With 1000 steps the samples have the data's spread; with fewer, a discretisation
    error remains (too little variance) and it shrinks as the steps grow."""
    relative_error = {}
    for steps in (20, 100, 1000):
        _, images = oracle_sample(GaussianOracle(DATA_STD), 512, num_steps=steps, sampler=sampler, eta=eta)
        assert images.shape == (512, 4, 4, 3)
        assert float(images.mean()) == pytest.approx(0.0, abs=0.02)
        relative_error[steps] = abs(float(images.std()) / DATA_STD - 1)
    assert relative_error[1000] < 0.02, relative_error
    assert relative_error[1000] < relative_error[100] < relative_error[20] < 0.25, relative_error


@pytest.mark.parametrize("sampler, order", [("ddim", 1), ("heun", 2), ("dpm++2m", 2)])
def test_ode_samplers_converge_at_their_order(sampler, order):
    """The deterministic samplers solve the probability-flow ODE, whose solution for Gaussian
    data is known (`exact_ode_solution`). Doubling the steps must divide the error by 2^order."""
    std, schedule = 0.2, cosine_schedule(1000)  # std 0.2: x0 stays inside [-1, 1], so clipping never acts
    error = {}
    for steps in (40, 80):
        noise, images = oracle_sample(GaussianOracle(std), 64, num_steps=steps, sampler=sampler)
        exact = exact_ode_solution(noise, noise_levels(schedule, sampler, steps)[0], std)
        error[steps] = float(jnp.max(jnp.abs(images - exact)))
    measured_order = np.log2(error[40] / error[80])
    assert order - 0.3 < measured_order < order + 0.7, (error, measured_order)


def test_noise_levels_and_network_time():
    schedule = cosine_schedule(1000)
    time_of = lambda levels: network_time(step_index_of(schedule, jnp.asarray(levels, jnp.float32)), 1000)  # noqa: E731
    # DDPM and DDIM visit training steps, where the network time is exactly (t + 1) / T.
    levels = noise_levels(schedule, "ddim", 5)
    np.testing.assert_allclose(time_of(levels), (timestep_sequence(1000, 5) + 1) / 1000, atol=1e-5)
    # Karras levels: from sigma = 80 down to the schedule's smallest sigma, evenly spaced in sigma^(1/7).
    sigmas = sigma_from_alpha_bar(noise_levels(schedule, "heun", 6))
    assert sigmas[0] == pytest.approx(80.0, rel=1e-6)
    assert sigmas[-1] == pytest.approx(float(sigma_from_alpha_bar(np.float64(schedule.alpha_bar[0]))), rel=1e-6)
    np.testing.assert_allclose(np.diff(sigmas ** (1 / 7)), np.diff(sigmas ** (1 / 7))[0], rtol=1e-4)
    np.testing.assert_allclose(karras_sigmas(0.002, 80.0, 2), [80.0, 0.002])
    # In between training steps, the time is interpolated and keeps increasing with the noise.
    times = time_of(noise_levels(schedule, "dpm++2m", 30))
    assert np.all(np.diff(np.asarray(times)) < 0) and 0 < float(times[-1]) < float(times[0]) <= 1
    assert [function_evaluations(s, 10) for s in ("ddpm", "ddim", "heun", "dpm++2m")] == [10, 10, 19, 10]


def test_static_clipping_keeps_x0_in_the_image_range_and_none_leaves_it():
    """For data of std 2, far outside [-1, 1], clipping each x0 prediction bounds the samples,
    and without it the sampler reaches the data's spread (latents have no [-1, 1] range)."""
    _, clipped = oracle_sample(GaussianOracle(2.0), 512, num_steps=100, x0_clipping="static")
    _, free = oracle_sample(GaussianOracle(2.0), 512, num_steps=100, x0_clipping="none")
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
    _, static = oracle_sample(GaussianOracle(2.0), 512, num_steps=100, x0_clipping="static")
    _, dynamic = oracle_sample(GaussianOracle(2.0), 512, num_steps=100, x0_clipping="dynamic")
    assert float(jnp.abs(dynamic).max()) <= 1.0 + 1e-6
    saturated = lambda x: float(jnp.mean(jnp.abs(x) >= 1.0 - 1e-3))  # noqa: E731
    assert saturated(static) > 0.3 and saturated(dynamic) < 0.05, (saturated(static), saturated(dynamic))


def test_trajectory_holds_one_prediction_per_step(model):
    noise = jax.random.normal(jax.random.key(0), (1, 16, 16, 3))
    ids = jnp.ones((1, 24), jnp.int32)
    images, trajectory = sample(model, cosine_schedule(1000), noise, ids, ids, num_steps=3, keep_trajectory=True)
    assert trajectory.shape == (3, 1, 16, 16, 3)
    np.testing.assert_array_equal(trajectory[-1], images)


def test_guidance_scale_one_is_conditional_and_zero_unconditional(model, tokenizer):
    model.unet.out.kernel[...] = 0.05 * jnp.ones_like(model.unet.out.kernel[...])  # make outputs nonzero
    xt = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    t = jnp.array([0.3, 0.8])
    caption = model.encode_captions(jnp.asarray(tokenizer.encode_batch(["a red flower", "a blue bird"])))
    empty = model.encode_captions(jnp.asarray(tokenizer.empty(2)))
    conditional = model.denoise(xt, t, caption)
    unconditional = model.denoise(xt, t, empty)
    assert not np.allclose(conditional, unconditional)
    for scale, expected in ((1.0, conditional), (0.0, unconditional), (3.0, unconditional + 3 * (conditional - unconditional))):
        np.testing.assert_allclose(guided_output(model, xt, t, caption, empty, scale, guided=True), expected, atol=1e-5)


def test_timestep_sequence():
    assert list(timestep_sequence(1000, 1)) == [999]
    seq = timestep_sequence(1000, 50)
    assert seq[0] == 999 and seq[-1] == 0 and len(seq) == 50 and np.all(np.diff(seq) < 0)
    with pytest.raises(ValueError, match="between 1 and 1000"):
        timestep_sequence(1000, 0)


@pytest.mark.parametrize("settings, message", [
    (dict(sampler="euler"), "unknown sampler"),
    (dict(num_steps=0), "at least 1"),
    (dict(sampler="heun", num_steps=1), "at least 2"),
    (dict(num_steps=2.5), "whole number"),
    (dict(guidance_scale=float("nan")), "finite"),
    (dict(guidance_scale=float("inf")), "finite"),
    (dict(eta=-0.5), "eta"),
    (dict(eta=float("nan")), "eta"),
    (dict(x0_clipping="percentile"), "unknown x0 clipping"),
])
def test_settings_no_sampler_can_run_are_clear_errors(settings, message):
    settings = dict(sampler="ddim", num_steps=10, guidance_scale=3.0, eta=0.0, x0_clipping="static") | settings
    with pytest.raises(ValueError, match=message):
        check_settings(**settings)
    with pytest.raises(ValueError, match=message):  # sample checks before it compiles anything
        oracle_sample(GaussianOracle(), 2, **settings)
