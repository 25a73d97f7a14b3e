"""Samplers, checked against a denoiser whose answer is known in closed form.

For data x0 ~ N(0, s^2 I), the best possible x0 prediction from
x_t = a x0 + sqrt(1 - a^2) eps is E[x0 | x_t] = a s^2 / (a^2 s^2 + 1 - a^2) x_t.
A correct sampler driven by this oracle must produce samples with standard
deviation s.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minidiff.corruption import cosine_alpha_bar, cosine_schedule
from minidiff.sampling import guided_output, sample, timestep_sequence

DATA_STD = 0.3  # small enough that clipping x0 to [-1, 1] never matters


class GaussianOracle(nnx.Module):
    """Predicts x0 exactly for Gaussian data; ignores the caption."""

    def __init__(self, std=DATA_STD, image_size=4):
        self.std = std
        self.config = types.SimpleNamespace(
            prediction="x0", unet=types.SimpleNamespace(image_size=image_size, channels=3)
        )

    def encode_captions(self, token_ids):
        return (jnp.zeros(token_ids.shape + (1,)),)

    def denoise(self, xt, t, caption):
        alpha_bar = cosine_alpha_bar(t).reshape(-1, 1, 1, 1)  # the cosine schedule at step t
        return jnp.sqrt(alpha_bar) * self.std**2 / (alpha_bar * self.std**2 + 1 - alpha_bar) * xt


@pytest.mark.parametrize("sampler, eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
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


def test_ddim_eta0_is_deterministic_and_seeds_matter(model, tokenizer):
    ids = tokenizer.encode_batch(["a red flower", "a blue bird"])
    run = lambda seed: sample(model, cosine_schedule(1000), ids, tokenizer.empty(1), seed, num_steps=4, sampler="ddim")
    first, again, other = run(0), run(0), run(1)
    assert first.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_trajectory_holds_one_prediction_per_step(model, tokenizer):
    ids = tokenizer.encode_batch(["a red flower"])
    images, trajectory = sample(model, cosine_schedule(1000), ids, tokenizer.empty(1), num_steps=3, keep_trajectory=True)
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
