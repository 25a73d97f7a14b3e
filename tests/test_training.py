import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import TINY_TRAIN
from minidiff.corruption import make_schedule, snr
from minidiff.datasets import to_model_range
from minidiff.training import (
    CompiledTrainStep, TrainingDiverged, diffusion_loss, drop_captions, loss_weight, new_train_state,
    resume_train_state, train, train_step,
)


def params_of(module):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(module, nnx.Param))]


def test_loss_falls_over_a_few_steps(dataset, tokenizer, model_config):
    """The loss on a fixed batch, averaged over 16 fixed draws of noise levels and noise, drops
    in the 6 steps of TINY_TRAIN (the step every other test compiles)."""
    images = dataset.subset(np.arange(8))  # one batch, seen at every step
    x0 = jnp.asarray(to_model_range(images.images))
    ids = jnp.asarray(tokenizer.encode_batch([c[0] for c in images.captions]))
    schedule = make_schedule(TINY_TRAIN.schedule, TINY_TRAIN.num_timesteps)
    jitted_loss = nnx.jit(diffusion_loss, static_argnames="config")  # one program for all 32 evaluations
    fixed_loss = lambda model: np.mean(  # noqa: E731
        [float(jitted_loss(model, schedule, x0, ids, jax.random.key(k), config=TINY_TRAIN)) for k in range(16)])
    state = new_train_state(model_config, tokenizer, TINY_TRAIN)
    before = fixed_loss(state.model)
    state = train(state, images, progress=False)
    assert len(state.losses) == TINY_TRAIN.steps and np.all(np.isfinite([loss for _, loss in state.losses]))
    assert fixed_loss(state.model) < 0.95 * before  # measured 0.87; same t, noise and images: no luck involved


def test_compiled_step_on_arrays_equals_the_step_on_modules(dataset, tokenizer, model_config):
    """CompiledTrainStep (split once, jax.jit on donated arrays) updates the model, the
    optimizer and the EMA exactly as nnx.jit(train_step) on the modules does."""
    schedule = make_schedule(TINY_TRAIN.schedule, TINY_TRAIN.num_timesteps)
    images = jnp.asarray(dataset.images[:8])
    ids = jnp.asarray(tokenizer.encode_batch([c[0] for c in dataset.captions[:8]]))
    empty = jnp.asarray(tokenizer.empty(1)[0])
    on_modules = new_train_state(model_config, tokenizer, TINY_TRAIN)
    on_arrays = new_train_state(model_config, tokenizer, TINY_TRAIN)
    step_on_modules = nnx.jit(train_step, static_argnames="config")
    step_on_arrays = CompiledTrainStep(on_arrays.model, on_arrays.optimizer, on_arrays.ema, TINY_TRAIN)
    for i in range(2):
        key = jax.random.key(i)
        a = step_on_modules(on_modules.model, on_modules.optimizer, on_modules.ema, schedule, images, ids, empty, key,
                            config=TINY_TRAIN)
        b = step_on_arrays(schedule, images, ids, empty, key)
        np.testing.assert_allclose(float(a), float(b), rtol=1e-5)
    step_on_arrays.sync()
    assert int(on_arrays.optimizer.step[...]) == 2
    for name in ("model", "ema"):
        for x, y in zip(params_of(getattr(on_modules, name)), params_of(getattr(on_arrays, name))):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_runs_with_equal_settings_share_one_compiled_step(tokenizer, model_config):
    """Two new runs split into equal structures (graphdefs), so the second reuses the first's traced
    and compiled step instead of tracing it again."""
    a, b = (new_train_state(model_config, tokenizer, TINY_TRAIN) for _ in range(2))
    program = lambda s: CompiledTrainStep(s.model, s.optimizer, s.ema, s.config).program  # noqa: E731
    assert program(a) is program(b)
    other = new_train_state(model_config, tokenizer, dataclasses.replace(TINY_TRAIN, learning_rate=1e-4))
    assert program(other) is not program(a)  # a different schedule is a different program


class Interrupted(Exception):
    pass


def test_resumed_run_ends_with_the_same_parameters(tmp_path, dataset, tokenizer, model_config):
    """Crash after the step-3 checkpoint, resume, finish: identical to never stopping."""
    straight = train(new_train_state(model_config, tokenizer, TINY_TRAIN), dataset, tmp_path / "a", progress=False,
                     on_report=lambda state: None)

    def crash(state):
        raise Interrupted

    with pytest.raises(Interrupted):
        train(new_train_state(model_config, tokenizer, TINY_TRAIN), dataset, tmp_path / "b", on_report=crash, progress=False)
    resumed = resume_train_state(tmp_path / "b" / "checkpoint.npz", TINY_TRAIN)
    assert resumed.step == 3
    resumed = train(resumed, dataset, tmp_path / "b", on_report=lambda state: None, progress=False)
    assert resumed.step == straight.step == 6
    for name in ("model", "ema"):
        for a, b in zip(params_of(getattr(straight, name)), params_of(getattr(resumed, name))):
            np.testing.assert_array_equal(a, b)
    assert [round(l, 6) for _, l in resumed.losses] == [round(l, 6) for _, l in straight.losses]


def test_resume_refuses_changed_settings(tmp_path, dataset, tokenizer, model_config):
    train(new_train_state(model_config, tokenizer, TINY_TRAIN), dataset, tmp_path, progress=False)
    with pytest.raises(Exception, match="learning_rate"):
        resume_train_state(tmp_path / "checkpoint.npz", dataclasses.replace(TINY_TRAIN, learning_rate=0.1))


def test_nan_loss_stops_the_run_before_any_checkpoint(tmp_path, dataset, tokenizer, model_config):
    state = new_train_state(model_config, tokenizer, TINY_TRAIN)
    state.model.unet.stem.kernel[...] = jnp.full_like(state.model.unet.stem.kernel[...], jnp.nan)
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        train(state, dataset, tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.npz").exists()


def test_image_size_mismatch_is_a_clear_error(tokenizer, model_config):
    from minidiff.datasets import toy_dataset

    with pytest.raises(ValueError, match="32px but the model was built for 16px"):
        train(new_train_state(model_config, tokenizer, TINY_TRAIN), toy_dataset(num_images=8, image_size=32), progress=False)


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


def test_bfloat16_mixed_precision_keeps_float32_weights_and_matches_the_loss(dataset, tokenizer, model_config):
    runs = {}
    for precision in ("float32", "bfloat16"):
        config = dataclasses.replace(TINY_TRAIN, precision=precision)  # float32: the step other tests compile
        runs[precision] = train(new_train_state(model_config, tokenizer, config), dataset, progress=False)
    params = jax.tree.leaves(nnx.state(runs["bfloat16"].model, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)  # the master weights
    fp32, bf16 = ([loss for _, loss in runs[p].losses] for p in ("float32", "bfloat16"))
    # Same data, noise and initial weights: the losses differ only by bfloat16 rounding (~3 significant digits).
    np.testing.assert_allclose(bf16, fp32, rtol=0.03)
    assert bf16 != fp32  # bfloat16 really was used
    with pytest.raises(ValueError, match="unknown precision"):
        train(new_train_state(model_config, tokenizer, dataclasses.replace(TINY_TRAIN, precision="float16")), dataset,
              progress=False)
