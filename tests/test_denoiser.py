import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff.denoiser import UNetConfig, depth_to_space, noise_level_embedding, space_to_depth, upsample_nearest
from minidiff.corruption import Diffusion
from minidiff.model import ModelConfig, count_parameters, create_model, preset


def test_space_to_depth_is_inverted_by_depth_to_space():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    folded = space_to_depth(x, 2)
    assert folded.shape == (2, 4, 4, 12)
    np.testing.assert_array_equal(folded[0, 0, 0], x[0, :2, :2].reshape(-1))
    np.testing.assert_array_equal(depth_to_space(folded, 2), x)


def test_noise_level_embedding_and_upsampling_shapes():
    emb = noise_level_embedding(jnp.array([0.0, 0.5, 1.0]), 32)
    assert emb.shape == (3, 32) and float(jnp.abs(emb).max()) <= 1.0
    assert not np.allclose(emb[1], emb[2])
    assert upsample_nearest(jnp.ones((1, 3, 3, 2))).shape == (1, 6, 6, 2)


@pytest.mark.parametrize("patch_size", [1, 2])
def test_model_output_has_the_image_shape(patch_size, tokenizer):
    config = preset("tiny", tokenizer.vocab_size, image_size=16, max_length=tokenizer.max_length, patch_size=patch_size)
    model = create_model(config)
    xt = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    ids = jnp.asarray(tokenizer.encode_batch(["a red flower", "a blue bird"]))
    out = model.denoise(xt, jnp.array([0.1, 0.9]), model.encode_captions(ids))
    assert out.shape == xt.shape and out.dtype == jnp.float32
    # The output convolution starts at zero, so an untrained network predicts zero.
    assert float(jnp.abs(out).max()) == 0.0
    assert count_parameters(model) > 0


def test_initialisation_follows_the_declared_rules(model):
    kernel = np.asarray(model.denoiser.stem.kernel[...])
    fan_in = np.prod(kernel.shape[:-1])
    assert kernel.std() == pytest.approx(1 / np.sqrt(fan_in), rel=0.15)  # LeCun normal
    assert np.all(np.asarray(model.denoiser.stem.bias[...]) == 0)
    assert np.all(np.asarray(model.denoiser.out_norm.scale[...]) == 1)
    assert np.asarray(model.text_encoder.position_embedding[...]).std() == pytest.approx(0.02, rel=0.2)


def test_caption_changes_the_prediction_once_trained_weights_are_nonzero(model, tokenizer):
    # Give the output layer weights, then check the caption actually reaches the output.
    model.denoiser.out.kernel[...] = 0.1 * jnp.ones_like(model.denoiser.out.kernel[...])
    xt = jnp.zeros((1, 16, 16, 3))
    caption = lambda text: model.encode_captions(jnp.asarray(tokenizer.encode_batch([text])))  # noqa: E731
    a = model.denoise(xt, jnp.array([0.5]), caption("a red flower"))
    b = model.denoise(xt, jnp.array([0.5]), caption("a blue bird"))
    assert float(jnp.abs(a - b).max()) > 1e-4


def test_bad_configs_are_clear_errors(tokenizer):
    for size in (30, 0):
        with pytest.raises(ValueError, match="positive multiple of"):
            UNetConfig(image_size=size, patch_size=2, widths=(8, 16))
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge", 10)
    config = preset("tiny", 10)
    with pytest.raises(ValueError, match="caption_dim"):
        dataclasses.replace(config, text=dataclasses.replace(config.text, dim=64))
    with pytest.raises(ValueError, match="prediction must be one of"):
        dataclasses.replace(config, process=Diffusion(prediction="score"))
    with pytest.raises(ValueError, match="takes 6 channels in and 3 out, but a base model is shown x_t alone"):
        dataclasses.replace(config, denoiser=dataclasses.replace(config.denoiser, in_channels=6))
    with pytest.raises(ValueError, match="a unet has no setting width"):
        preset("tiny", 10, width=64)
    assert ModelConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("modulated", [True, False])
def test_at_initialisation_only_the_modulated_output_norm_passes_the_noise_level_on(modulated, tokenizer):
    # Every residual block's last conv starts at zero, so at initialisation no block lets t through;
    # the modulated output norm is the direct path (see `UNet.__call__`).
    config = preset("tiny", tokenizer.vocab_size, image_size=16, max_length=tokenizer.max_length,
                    modulated_output_norm=modulated)
    model = create_model(config)
    model.denoiser.out.kernel[...] = 0.1 * jnp.ones_like(model.denoiser.out.kernel[...])
    xt = jax.random.normal(jax.random.key(0), (1, 16, 16, 3))
    ids = jnp.asarray(tokenizer.encode_batch(["a red flower"]))
    caption = model.encode_captions(ids)
    change = float(jnp.abs(model.denoise(xt, jnp.array([0.1]), caption) - model.denoise(xt, jnp.array([0.9]), caption)).max())
    assert (change > 1e-3) if modulated else (change < 1e-6)
