"""Samplers, checked against a denoiser whose answer is known in closed form (`minidiff.oracles`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff.corruption import cosine_schedule
from minidiff.oracles import GaussianOracle, exact_ode_solution
from minidiff.sampling import (function_evaluations, guided_output, karras_sigmas, network_time, noise_levels, sample,
                               sigma_from_alpha_bar, timestep_sequence)

DATA_STD = 0.3  # small enough that clipping x0 to [-1, 1] never matters


@pytest.mark.parametrize("sampler, eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0), ("heun", 0.0), ("dpm++2m", 0.0)])
def test_samplers_converge_to_the_data_distribution(sampler, eta):
    """With 1000 steps the samples have the data's spread; with fewer, a discretisation
    error remains (too little variance) and it shrinks as the steps grow."""
    ids = jnp.ones((512, 4), jnp.int32)
    relative_error = {}
    for steps in (20, 100, 1000):
        images = sample(GaussianOracle(), cosine_schedule(1000), ids, ids[:1], seed=0, num_steps=steps,
                        sampler=sampler, eta=eta)
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
    ids = jnp.ones((64, 4), jnp.int32)
    noise = jax.random.normal(jax.random.split(jax.random.key(0))[0], (64, 4, 4, 3))  # the noise `sample` draws
    error = {}
    for steps in (40, 80):
        exact = exact_ode_solution(noise, noise_levels(schedule, sampler, steps)[0], std)
        images = sample(GaussianOracle(std), schedule, ids, ids[:1], seed=0, num_steps=steps, sampler=sampler)
        error[steps] = float(jnp.max(jnp.abs(images - exact)))
    measured_order = np.log2(error[40] / error[80])
    assert order - 0.3 < measured_order < order + 0.7, (error, measured_order)


def test_noise_levels_and_network_time():
    schedule = cosine_schedule(1000)
    # DDPM and DDIM visit training steps, where the network time is exactly (t + 1) / T.
    levels = noise_levels(schedule, "ddim", 5)
    np.testing.assert_allclose(network_time(schedule, jnp.asarray(levels, jnp.float32)),
                               (timestep_sequence(1000, 5) + 1) / 1000, atol=1e-5)
    # Karras levels: from sigma = 80 down to the schedule's smallest sigma, evenly spaced in sigma^(1/7).
    sigmas = sigma_from_alpha_bar(noise_levels(schedule, "heun", 6))
    assert sigmas[0] == pytest.approx(80.0, rel=1e-6)
    assert sigmas[-1] == pytest.approx(float(sigma_from_alpha_bar(np.float64(schedule.alpha_bar[0]))), rel=1e-6)
    np.testing.assert_allclose(np.diff(sigmas ** (1 / 7)), np.diff(sigmas ** (1 / 7))[0], rtol=1e-4)
    np.testing.assert_allclose(karras_sigmas(0.002, 80.0, 2), [80.0, 0.002])
    # In between training steps, the time is interpolated and keeps increasing with the noise.
    times = network_time(schedule, jnp.asarray(noise_levels(schedule, "dpm++2m", 30), jnp.float32))
    assert np.all(np.diff(np.asarray(times)) < 0) and 0 < float(times[-1]) < float(times[0]) <= 1
    assert [function_evaluations(s, 10) for s in ("ddpm", "ddim", "heun", "dpm++2m")] == [10, 10, 19, 10]


def test_ddim_eta0_is_deterministic_and_seeds_matter(model, tokenizer):
    ids = tokenizer.encode_batch(["a red flower", "a blue bird"])
    run = lambda seed: sample(model, cosine_schedule(1000), ids, tokenizer.empty(1), seed, num_steps=4, sampler="ddim")
    first, again, other = run(0), run(0), run(1)
    assert first.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_trajectory_holds_one_prediction_per_step(model, tokenizer):
    ids = tokenizer.encode_batch(["a red flower"])
    _, trajectory = sample(model, cosine_schedule(1000), ids, tokenizer.empty(1), num_steps=3, keep_trajectory=True)
    assert trajectory.shape == (3, 1, 16, 16, 3)


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
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(GaussianOracle(), cosine_schedule(10), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32), sampler="euler")
