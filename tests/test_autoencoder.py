"""Latent diffusion: the autoencoder against closed forms, its training and resume, latents cached, and a
latent model that decodes what it draws."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import minidiff
from minidiff.autoencoder import (Autoencoder, AutoencoderConfig, autoencoder_preset, decode_latents, encode_images,
                                  kl_to_standard_normal, load_autoencoder, sample_posterior)
from minidiff.latents import (AutoencoderTraining, latent_dataset, measure_latent_scale, resume_autoencoder_run,
                              start_autoencoder_run, train_autoencoder)
from minidiff.loop import TrainConfig, save_run
from minidiff.machinery.checkpoints import CheckpointError
from minidiff.machinery.initialisation import initialised
from minidiff.model import preset
from minidiff.training import start_run, train

# A tiny autoencoder, 16 px images to 4 x 4 x 4 latents: one config, so its programs compile once.
TINY = AutoencoderConfig(image_size=16, widths=(8, 16), groups=4)
TRAINING = TrainConfig(steps=6, batch_size=8, learning_rate=3e-3, warmup=0.2, weight_decay=0.0, ema_decay=0.0,
                       log_every=1, checkpoint_every=3)


@pytest.mark.parametrize("factor", [4, 8])
def test_shapes_at_either_factor(factor):
    config = autoencoder_preset(factor, image_size=32, widths=(8, 16) if factor == 4 else (8, 16, 16),
                                groups=4)
    model = initialised(Autoencoder, config)
    images = jnp.zeros((2, 32, 32, 3))
    mean, log_variance = model.encoder(images)
    assert mean.shape == log_variance.shape == (2, 32 // factor, 32 // factor, 4) == (2, *config.latent_shape)
    reconstruction, _, _ = model(images, jax.random.key(0))
    assert reconstruction.shape == images.shape
    assert model.from_latents(mean).shape == images.shape


@pytest.mark.parametrize("change, message", [
    (dict(image_size=18), "divisible by 4"),
    (dict(widths=()), "at least one width"),
    (dict(patch_size=0), "patch size of at least 1"),
    (dict(widths=(8, 10)), "divisible by groups"),
    (dict(latent_channels=0), "latent_channels"),
])
def test_configs_that_cannot_work_are_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **change)
    with pytest.raises(ValueError, match="one of"):
        autoencoder_preset(2)
    with pytest.raises(ValueError, match="shrinks images 8 times"):
        autoencoder_preset(4, widths=(8, 16, 16))


def test_kl_matches_its_closed_form_and_a_monte_carlo_estimate():
    rng = np.random.default_rng(0)
    mean, log_variance = rng.normal(size=(2, 3, 3, 2)), rng.normal(size=(2, 3, 3, 2)) * 0.5
    kl = np.asarray(kl_to_standard_normal(jnp.asarray(mean), jnp.asarray(log_variance)))
    # KL(N(m, s^2) || N(0, 1)) = log(1 / s) + (s^2 + m^2) / 2 - 1/2, per dimension, summed.
    std = np.exp(0.5 * log_variance)
    closed = np.sum(-np.log(std) + (std**2 + mean**2) / 2 - 0.5, axis=(1, 2, 3))
    np.testing.assert_allclose(kl, closed, rtol=1e-5)
    # E_q[log q(z) - log p(z)], sampled.
    z = mean + std * rng.normal(size=(20000, *mean.shape))
    log_q = -0.5 * ((z - mean) / std) ** 2 - np.log(std)
    log_p = -0.5 * z**2
    np.testing.assert_allclose(kl, np.mean(np.sum(log_q - log_p, axis=(2, 3, 4)), axis=0), rtol=0.05)
    assert np.asarray(kl_to_standard_normal(jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 2, 2, 1)))) == 0.0


def test_the_reparametrisation_has_the_posteriors_mean_and_variance():
    mean, log_variance = jnp.array([1.5, -2.0]), jnp.log(jnp.array([0.25, 4.0]))
    keys = jax.random.split(jax.random.key(0), 50000)
    z = jax.vmap(lambda key: sample_posterior(mean, log_variance, key))(keys)
    np.testing.assert_allclose(z.mean(0), mean, atol=0.03)
    np.testing.assert_allclose(z.var(0), [0.25, 4.0], rtol=0.03)
    # The gradient reaches the mean and the log-variance through the sample.
    grads = jax.grad(lambda m, lv: sample_posterior(m, lv, keys[0]).sum(), argnums=(0, 1))(mean, log_variance)
    assert np.all(np.asarray(grads[0]) == 1.0) and np.all(np.asarray(grads[1]) != 0.0)


def test_the_measured_scale_makes_the_latents_unit_variance(dataset):
    model = initialised(Autoencoder, TINY)
    images = dataset.images[:48]
    assert float(np.std(encode_images(model, images))) != pytest.approx(1.0, abs=0.05)
    scale = measure_latent_scale(model, images)
    latents = encode_images(model, images)
    assert latents.shape == (48, 4, 4, 4)
    assert float(np.std(latents)) == pytest.approx(1.0, rel=1e-4)
    assert float(model.latent_scale[...]) == pytest.approx(scale)


def test_a_tiny_autoencoder_learns_a_few_images_by_heart(dataset):
    few = dataset.subset(np.arange(4))
    run = start_autoencoder_run(TINY, dataclasses.replace(TRAINING, steps=300, batch_size=4, learning_rate=3e-3,
                                                          log_every=50))
    run = train_autoencoder(run, few, progress=False)
    first, last = run.history[0]["l1"], run.history[-1]["l1"]  # the reconstruction's L1
    rebuilt = decode_latents(run.model, encode_images(run.model, few.images))
    error = np.abs(rebuilt - (few.images / 127.5 - 1.0)).mean()
    # A tenth of the L1 it started from; each pixel within 5 % of the [-1, 1] range on average.
    assert last < first / 5 and error < 0.1, (first, last, error)


def test_an_interrupted_autoencoder_run_resumes_to_the_same_parameters(tmp_path, dataset, monkeypatch):
    """The autoencoder trains in the one loop: killed right after its checkpoint at step 3, resumed, it ends
    where an uninterrupted run ends, its file ready to use at every save (the latent scale measured)."""
    whole = train_autoencoder(start_autoencoder_run(TINY, TRAINING), dataset, tmp_path / "whole.npz", progress=False)

    class Interrupted(Exception):
        pass

    def save_then_crash(path, run, task):
        save_run(path, run, task)  # the function as imported above, before the patch
        raise Interrupted

    monkeypatch.setattr(minidiff.loop, "save_run", save_then_crash)
    with pytest.raises(Interrupted):
        train_autoencoder(start_autoencoder_run(TINY, TRAINING), dataset, tmp_path / "halted.npz", progress=False)
    monkeypatch.undo()
    assert float(load_autoencoder(tmp_path / "halted.npz").latent_scale[...]) != 1.0  # measured before saving
    halted = resume_autoencoder_run(tmp_path / "halted.npz", TRAINING)
    assert halted.step == 3
    resumed = train_autoencoder(halted, dataset, tmp_path / "halted.npz", progress=False)
    assert resumed.step == whole.step == 6
    for a, b in zip(jax.tree.leaves(jax.tree.map(np.asarray, whole.model)),
                    jax.tree.leaves(jax.tree.map(np.asarray, resumed.model))):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(CheckpointError, match="learning_rate"):
        resume_autoencoder_run(tmp_path / "halted.npz", dataclasses.replace(TRAINING, learning_rate=1e-2))


@pytest.fixture(scope="module")
def autoencoder_file(tmp_path_factory, dataset):
    path = tmp_path_factory.mktemp("autoencoder") / "autoencoder.npz"
    run = start_autoencoder_run(TINY, TRAINING)
    save_run(path, run, AutoencoderTraining(run.model, dataset, TRAINING))
    return path


def test_latents_are_encoded_once_and_cached(autoencoder_file, dataset, tmp_path):
    autoencoder = load_autoencoder(autoencoder_file)
    sha = minidiff.autoencoder.file_sha256(autoencoder_file)
    latents = latent_dataset(dataset, autoencoder, sha, cache_dir=tmp_path, progress=False)
    assert latents.latent and latents.images.shape == (len(dataset), 4, 4, 4) and not latents.flip_ok
    assert latents.captions == dataset.captions
    np.testing.assert_allclose(latents.images, encode_images(autoencoder, dataset.images), rtol=1e-5, atol=1e-6)
    (cached,) = tmp_path.glob("latents-*.npy")
    np.save(cached, np.zeros_like(latents.images))  # what the cache holds is read back, not encoded again
    assert not latent_dataset(dataset, autoencoder, sha, cache_dir=tmp_path, progress=False).images.any()
    latent_dataset(dataset, autoencoder, "another autoencoder", cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("latents-*.npy"))) == 2  # another key, another file
    with pytest.raises(ValueError, match="encodes 16 px images"):
        latent_dataset(dataclasses.replace(dataset, images=np.zeros((64, 8, 8, 3), np.uint8)), autoencoder, sha,
                       cache_dir=tmp_path)


@pytest.fixture(scope="module")
def latent_checkpoint(autoencoder_file, dataset, tokenizer, train_config, tmp_path_factory):
    autoencoder = load_autoencoder(autoencoder_file)
    latents = latent_dataset(dataset, autoencoder, minidiff.autoencoder.file_sha256(autoencoder_file),
                             cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    config = dataclasses.replace(
        preset("tiny", tokenizer.vocab_size, image_size=4, max_length=tokenizer.max_length, channels=4,
               patch_size=1, attention_resolutions=(2,)),
        autoencoder_sha256=minidiff.autoencoder.file_sha256(autoencoder_file),
        autoencoder_file=str(autoencoder_file))
    path = tmp_path_factory.mktemp("latent_run") / "checkpoint.npz"
    run = train(start_run(config, dataclasses.replace(train_config, steps=2)), latents, tokenizer, path,
                progress=False)
    assert np.isfinite(run.losses[-1][1])
    return path


def test_a_latent_model_draws_latents_and_decodes_them_to_images(latent_checkpoint):
    generator = minidiff.load(latent_checkpoint)
    assert generator.config.latent and generator.image_shape == (4, 4, 4) and generator.output_shape == (16, 16, 3)
    images = generator.sample(["a red flower with a yellow centre"] * 2, sampling_steps=2)
    assert images.shape == (2, 16, 16, 3) and np.all(np.abs(images) <= 1.0)
    with pytest.raises(ValueError, match="no range to clip"):
        generator.sample(["a red flower"], sampling_steps=2, x0_clipping="static")


def test_a_missing_or_another_autoencoder_is_a_clear_error(latent_checkpoint, dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="needs the autoencoder it was trained with"):
        minidiff.load(latent_checkpoint, autoencoder=tmp_path / "moved.npz")
    other = tmp_path / "other.npz"
    run = start_autoencoder_run(TINY, dataclasses.replace(TRAINING, seed=1))
    save_run(other, run, AutoencoderTraining(run.model, dataset, run.config))
    with pytest.raises(CheckpointError, match="not the autoencoder this model was trained with"):
        minidiff.load(latent_checkpoint, autoencoder=other)
    with pytest.raises(CheckpointError, match="not a minidiff autoencoder"):
        load_autoencoder(latent_checkpoint)
