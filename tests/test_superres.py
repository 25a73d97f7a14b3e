"""The super-resolution stage: its conditioning, the upscaler around a denoiser, training it, and the cascade."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff.captions import Tokenizer
from minidiff.corruption import Diffusion, to_model_range
from minidiff.datasets import toy_dataset
from minidiff.denoiser import UNet
from minidiff.dit import DiT
from minidiff.generator import Generator
from minidiff.loop import TrainConfig
from minidiff.model import ModelConfig, create_model, preset
from minidiff.superres import Upscaler, augment, downsample, low_res_condition, training_condition, upsample
from minidiff.training import resume_run, start_run, train


@pytest.fixture(scope="module")
def upscaler_config(tokenizer):
    return preset("tiny", tokenizer.vocab_size, image_size=16, max_length=tokenizer.max_length, upscale_from=8)


def params_of(module):
    from flax import nnx
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(module, nnx.Param))]


def test_downsampling_averages_and_upsampling_keeps_the_range():
    """A checkerboard of +-1 averages to about 0 when halved (a filter, where picking every other pixel
    would give +-1; exactly 0 away from the border, which the filter sees only on one side); a constant
    image stays constant both ways; bicubic overshoot is clipped to [-1, 1]."""
    board = jnp.tile(jnp.array([[1.0, -1.0], [-1.0, 1.0]]), (8, 8))[None, :, :, None]  # (1, 16, 16, 1)
    halved = downsample(board, 8)
    np.testing.assert_allclose(halved[:, 2:-2, 2:-2], 0.0, atol=1e-6)
    assert float(jnp.abs(halved).max()) < 0.05
    constant = jnp.full((2, 16, 16, 3), 0.3)
    np.testing.assert_allclose(downsample(constant, 4), 0.3, atol=1e-6)
    np.testing.assert_allclose(upsample(downsample(constant, 4), 16), 0.3, atol=1e-6)
    edge = jnp.where(jnp.arange(8) < 4, -1.0, 1.0)[None, None, :, None] * jnp.ones((1, 8, 8, 1))
    up = upsample(edge, 32)
    assert up.shape == (1, 32, 32, 1) and float(jnp.abs(up).max()) <= 1.0


def test_augmentation_level_zero_passes_the_image_unchanged_and_one_is_pure_noise():
    images = jax.random.uniform(jax.random.key(0), (3, 16, 16, 3), minval=-1, maxval=1)
    eps = jax.random.normal(jax.random.key(1), images.shape)
    np.testing.assert_array_equal(augment(images, jnp.zeros(3), eps), images)
    np.testing.assert_allclose(augment(images, jnp.ones(3), eps), eps, atol=1e-6)
    low_res = downsample(images, 8)
    condition, level = low_res_condition(low_res, 16, jnp.zeros(3), jax.random.key(2))
    np.testing.assert_array_equal(condition, upsample(low_res, 16))
    np.testing.assert_array_equal(level, 0.0)


def test_training_draws_one_level_per_image_in_zero_to_one():
    x0 = jnp.zeros((512, 16, 16, 3))
    condition, level = training_condition(x0, 8, jax.random.key(0))
    assert condition.shape == x0.shape and level.shape == (512,)
    assert 0.0 <= float(level.min()) and float(level.max()) < 1.0 and abs(float(level.mean()) - 0.5) < 0.05
    # Noise grows with the level: the conditioning of an all-zero image is its noise alone.
    noise_std = jnp.std(condition, axis=(1, 2, 3))
    assert np.corrcoef(np.asarray(level), np.asarray(noise_std))[0, 1] > 0.9


@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_an_upscaler_wraps_a_denoiser_shown_the_low_res_image_and_its_level(tokenizer, backbone):
    """Any backbone, built with twice the image's channels in, inside an `Upscaler`: its output depends on the
    low-res image and on that image's noise level; the backbone itself takes x_t beside the image and knows
    nothing of upscaling."""
    config = preset("tiny", tokenizer.vocab_size, image_size=16, max_length=tokenizer.max_length, backbone=backbone,
                    upscale_from=8)
    model = create_model(config)
    assert isinstance(model.denoiser, Upscaler) and isinstance(model.denoiser.denoiser, (UNet, DiT))
    assert (config.denoiser.in_channels, config.denoiser.out_channels) == (6, 3)
    xt = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    caption = model.encode_captions(jnp.asarray(tokenizer.encode_batch(["a red flower", "a blue bird"])))
    condition = low_res_condition(jnp.zeros((2, 8, 8, 3)), 16, jnp.array([0.0, 0.5]), jax.random.key(1))
    last = model.denoiser.denoiser.out
    last.kernel[...] = 0.05 * jnp.ones_like(last.kernel[...])  # outputs that depend on the input
    model.denoiser.level_to_caption.kernel[...] = jnp.ones_like(model.denoiser.level_to_caption.kernel[...])
    t = jnp.array([0.3, 0.3])
    out = model.denoise(xt, t, (*caption, *condition))
    assert out.shape == xt.shape
    other_image = (condition[0] + 0.5, condition[1])
    other_level = (condition[0], condition[1] + 0.3)
    for changed in (other_image, other_level):
        assert not np.allclose(out, model.denoise(xt, t, (*caption, *changed)))


@pytest.mark.parametrize("change, message", [
    (dict(upscale_from=16), "from a smaller whole number"),
    (dict(upscale_from=-1), "from a smaller whole number"),
    (dict(upscale_from=0), "a base model is shown x_t alone"),
])
def test_upscaler_configs_that_cannot_work_are_clear_errors(upscaler_config, change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(upscaler_config, **change)


def test_the_upscalers_config_survives_a_checkpoint_header(upscaler_config):
    assert ModelConfig.from_dict(upscaler_config.to_dict()) == upscaler_config


def one_image(size: int) -> "CaptionedImages":  # noqa: F821
    """Eight copies of one drawing: a training set an upscaler can learn by heart."""
    data = toy_dataset(num_images=1, image_size=size, seed=3)
    return data.subset(np.zeros(8, int))


def test_a_tiny_upscaler_learns_one_pair_by_heart():
    """Trained on one image, the upscaler gives back its detail from the downsampled image: closer to it than
    bicubic interpolation is. (Predicting x0, the network has one constant answer to learn, which it does in a
    hundred steps; v changes with the noise.)"""
    data = one_image(16)
    tokenizer = Tokenizer.from_captions(data.all_captions(), max_length=24)
    config = dataclasses.replace(preset("tiny", tokenizer.vocab_size, image_size=16, max_length=24, upscale_from=8,
                                        process=Diffusion(prediction="x0")), caption_dropout=0.0)
    run = start_run(config, TrainConfig(steps=150, batch_size=8, learning_rate=1e-2, ema_decay=0.9, log_every=50))
    run = train(run, data, tokenizer, progress=False)
    real = to_model_range(data.images[:1])
    low_res = downsample(jnp.asarray(real), 8)
    upscaled = Generator.from_training(run, tokenizer).sample(data.captions[0][:1], low_res=low_res,
                                                              sampling_steps=20, guidance=1.0, augmentation_level=0.0)
    error = lambda images: float(np.mean((np.asarray(images) - real) ** 2))  # noqa: E731
    # About a fifth of bicubic's error; an upscaler that ignored its input would be far worse than bicubic.
    assert error(upscaled) < 0.5 * error(upsample(low_res, 16)), (error(upscaled), error(upsample(low_res, 16)))


def test_a_resumed_upscaler_run_ends_with_the_same_parameters(tmp_path, dataset, tokenizer, upscaler_config,
                                                                train_config):
    straight = train(start_run(upscaler_config, train_config), dataset, tokenizer, tmp_path / "a.npz", progress=False)

    class Interrupted(Exception):
        pass

    def crash(run):
        raise Interrupted

    with pytest.raises(Interrupted):
        train(start_run(upscaler_config, train_config), dataset, tokenizer, tmp_path / "b.npz", on_report=crash,
              progress=False)
    resumed = resume_run(tmp_path / "b.npz", train_config)
    assert resumed.step == 3 and resumed.model.config.upscale_from == 8
    resumed = train(resumed, dataset, tokenizer, tmp_path / "b.npz", progress=False)
    for name in ("model", "ema"):
        for a, b in zip(params_of(getattr(straight, name)), params_of(getattr(resumed, name))):
            np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def base_and_upscaler(tokenizer, upscaler_config):
    base = Generator(create_model(preset("tiny", tokenizer.vocab_size, image_size=8, max_length=tokenizer.max_length,
                                         patch_size=1, attention_resolutions=(4,))), tokenizer)
    return base, Generator(create_model(upscaler_config), tokenizer)


def test_a_cascade_makes_the_upscalers_size(base_and_upscaler):
    base, upscaler = base_and_upscaler
    cascade = base.then(upscaler, sampling_steps=3, augmentation_level=0.2)
    assert cascade.output_shape == (16, 16, 3) and base.output_shape == (8, 8, 3)
    images = cascade.sample(["a red flower", "a blue bird"], sampling_steps=2)
    assert images.shape == (2, 16, 16, 3) and np.all(np.abs(images) <= 1.0)
    # The upscaler's stage draws its own noise: the base image, upscaled by hand with the seed, is the same.
    small = base.sample(["a red flower", "a blue bird"], sampling_steps=2)
    by_hand = upscaler.sample(["a red flower", "a blue bird"], low_res=small, sampling_steps=3, augmentation_level=0.2)
    np.testing.assert_array_equal(images, by_hand)


def test_cascade_mismatches_are_clear_errors_before_sampling(base_and_upscaler, tokenizer):
    base, upscaler = base_and_upscaler
    with pytest.raises(ValueError, match="not an upscaler"):
        base.then(base)
    with pytest.raises(ValueError, match="takes 8 px images of 3 channels, but the stage before it makes 16 px"):
        base.then(upscaler).then(upscaler)
    other_words = Tokenizer(vocabulary=tokenizer.vocabulary + ("zebra",), max_length=tokenizer.max_length)
    with pytest.raises(ValueError, match="another vocabulary"):
        base.then(dataclasses.replace(upscaler, tokenizer=other_words))
    shorter = Tokenizer(vocabulary=tokenizer.vocabulary, max_length=tokenizer.max_length - 1)
    with pytest.raises(ValueError, match="it would cut them"):
        base.then(dataclasses.replace(upscaler, tokenizer=shorter))
    with pytest.raises(ValueError, match="augmentation level"):
        base.then(upscaler, augmentation_level=1.5)
    with pytest.raises(ValueError, match="unknown sampler"):
        base.then(upscaler, sampler="euler")
    with pytest.raises(ValueError, match="give it the images to upscale"):
        upscaler.sample(["a red flower"])
    with pytest.raises(ValueError, match=r"shape \(N, 8, 8, 3\)"):
        upscaler.sample(["a red flower"], low_res=np.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match="floats in"):
        upscaler.sample(["a red flower"], low_res=np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="one per caption"):
        upscaler.sample(["a red flower"], low_res=np.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match="low_res is for an upscaler"):
        base.sample(["a red flower"], low_res=np.zeros((1, 8, 8, 3)))
