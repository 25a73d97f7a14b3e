"""Training the text-to-image model: its loss, its batches, and a run of it in the one loop (`minidiff.loop`,
whose own tests are test_loop.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minidiff.corruption import loss_weight, snr, to_model_range
from minidiff.flows import StraightFlow
from minidiff.loss import denoising_loss, drop_captions
from minidiff.training import TextToImageTraining, start_run, train


def test_the_loss_falls_over_a_few_steps(dataset, tokenizer, model_config, train_config):
    """The loss on a fixed batch, averaged over 16 fixed draws of noise levels and noise, drops
    in the 6 steps of train_config (the step every other test compiles)."""
    images = dataset.subset(np.arange(8))  # one batch, seen at every step
    batch = (jnp.asarray(to_model_range(images.images)),
             (jnp.asarray(tokenizer.encode_batch([c[0] for c in images.captions])),))
    constants = ((jnp.asarray(tokenizer.empty(1)[0]),),)
    jitted_loss = nnx.jit(denoising_loss)  # one program for all 32 evaluations
    fixed_loss = lambda model: np.mean(  # noqa: E731
        [float(jitted_loss(model, batch, constants, jax.random.key(k))[0]) for k in range(16)])
    run = start_run(model_config, train_config)
    before = fixed_loss(run.model)
    run = train(run, images, tokenizer, progress=False)
    assert len(run.history) == train_config.steps and np.all(np.isfinite([loss for _, loss in run.losses]))
    # Same t, noise and images before and after: 0.86-0.96 of the loss before over the seeds 0-4; a broken
    # update (no step, or a step uphill) gives 1 or more.
    assert fixed_loss(run.model) < 0.98 * before


def test_a_flow_model_regresses_the_velocity(dataset, tokenizer, model_config, train_config):
    """The loss of a flow model is the mean squared error of its output against eps - x0 at x_t = (1 - t) x0
    + t eps, with t and eps drawn as the loss draws them."""
    config = dataclasses.replace(model_config, process=StraightFlow(), caption_dropout=0.0)
    model = start_run(config, train_config).model
    x0 = jnp.asarray(to_model_range(dataset.images[:4]))
    ids = jnp.asarray(tokenizer.encode_batch([c[0] for c in dataset.captions[:4]]))
    key = jax.random.key(3)
    loss, _ = denoising_loss(model, (x0, (ids,)), ((jnp.asarray(tokenizer.empty(1)[0]),),), key)
    _, loss_key = jax.random.split(key)
    time_key, noise_key = jax.random.split(loss_key)
    t, _, _ = config.process.training_times(time_key, 4)
    eps = jax.random.normal(noise_key, x0.shape)
    xt = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * eps
    output = model.denoise(xt, t, model.encode_captions(ids))
    np.testing.assert_allclose(float(loss), float(jnp.mean((output - (eps - x0)) ** 2)), rtol=1e-5)


def test_a_batch_is_a_pure_function_of_seed_and_step(dataset, tokenizer, model_config, train_config):
    """Images in the model's range, half of them mirrored where the captions allow (the embedded birds' captions
    say which way they face: none here), a caption of each image; the same every time it is asked for."""
    model = start_run(model_config, train_config).model
    task = TextToImageTraining(model, tokenizer, dataset, train_config)
    x0, captions = task.batch(5)
    again_x0, again_captions = task.batch(5)
    np.testing.assert_array_equal(x0, again_x0) and np.testing.assert_array_equal(captions[0], again_captions[0])
    assert x0.dtype == np.float32 and x0.shape == (8, 16, 16, 3) and -1 <= x0.min() and x0.max() <= 1
    assert captions[0].shape == (8, tokenizer.max_length) and len(captions) == 1  # the token ids
    assert not dataset.flip_ok
    flipped = dataclasses.replace(dataset, flip_ok=True)
    mirrored, _ = TextToImageTraining(model, tokenizer, flipped, train_config).batch(5)
    assert not np.array_equal(mirrored, x0)
    np.testing.assert_array_equal(np.sort(mirrored.ravel()), np.sort(x0.ravel()))  # the same pixels, some mirrored


def test_image_size_mismatch_is_a_clear_error(tokenizer, model_config, train_config):
    from minidiff.datasets import toy_dataset

    with pytest.raises(ValueError, match=r"the dataset's images are \(32, 32, 3\), but the model draws \(16, 16, 3\)"):
        train(start_run(model_config, train_config), toy_dataset(num_images=8, image_size=32), tokenizer, progress=False)


def test_min_snr_weights_match_hang_et_al():
    s = jnp.array([0.1, 5.0, 100.0])
    np.testing.assert_allclose(loss_weight("min_snr", "eps", s, 5.0), [1.0, 1.0, 0.05], rtol=1e-6)
    np.testing.assert_allclose(loss_weight("min_snr", "v", s, 5.0), [0.1 / 1.1, 5 / 6, 5 / 101], rtol=1e-6)
    np.testing.assert_allclose(loss_weight("min_snr", "x0", s, 5.0), [0.1, 5.0, 5.0], rtol=1e-6)
    assert float(snr(0.5)) == 1.0


def test_clipped_snr_weights_floor_min_snr_at_one():
    # x0 weights clip(SNR, 1, 5) = (1, 5, 5): min-SNR's, except at SNR 0.1, where min-SNR gives 0.1.
    s = jnp.array([0.1, 5.0, 100.0])
    np.testing.assert_allclose(loss_weight("clipped_snr", "x0", s, 5.0), [1.0, 5.0, 5.0], rtol=1e-6)
    # For eps the floor would be a weight of 1 / SNR on the eps error (4e8 at the last cosine step): none there.
    np.testing.assert_allclose(loss_weight("clipped_snr", "eps", s, 5.0), [1.0, 1.0, 0.05], rtol=1e-6)
    np.testing.assert_allclose(loss_weight("clipped_snr", "v", s, 5.0), [1 / 1.1, 5 / 6, 5 / 101], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown loss weighting"):
        loss_weight("snr", "v", s, 5.0)


def test_caption_dropout_rate():
    ids = jnp.full((20000, 4), 7)
    empty = jnp.array([1, 0, 0, 0])
    dropped = drop_captions(jax.random.key(0), ids, empty, 0.1)
    rate = float(jnp.all(dropped == empty, axis=1).mean())
    assert rate == pytest.approx(0.1, abs=0.01)


def test_bfloat16_mixed_precision_keeps_float32_weights_and_matches_the_loss(dataset, tokenizer, model_config,
                                                                             train_config):
    runs = {}
    for precision in ("float32", "bfloat16"):
        config = dataclasses.replace(train_config, precision=precision)  # float32: the step other tests compile
        runs[precision] = train(start_run(model_config, config), dataset, tokenizer, progress=False)
    params = jax.tree.leaves(nnx.state(runs["bfloat16"].model, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)  # the master weights
    fp32, bf16 = ([loss for _, loss in runs[p].losses] for p in ("float32", "bfloat16"))
    # Same data, noise and initial weights: the losses differ only by bfloat16 rounding (~3 significant digits).
    np.testing.assert_allclose(bf16, fp32, rtol=0.03)
    assert bf16 != fp32  # bfloat16 really was used
