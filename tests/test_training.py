import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minidiff.corruption import snr, to_model_range
from minidiff.machinery.checkpoints import Checkpoint, CheckpointError
from minidiff.training import (
    TrainConfig, TrainingDiverged, compiled_train_step, diffusion_loss, drop_captions, loss_weight, new_train_state,
    resume_train_state, train, train_step,
)


def params_of(module):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(module, nnx.Param))]


def test_loss_falls_over_a_few_steps(dataset, tokenizer, model_config, train_config):
    """The loss on a fixed batch, averaged over 16 fixed draws of noise levels and noise, drops
    in the 6 steps of train_config (the step every other test compiles)."""
    images = dataset.subset(np.arange(8))  # one batch, seen at every step
    x0 = jnp.asarray(to_model_range(images.images))
    ids = jnp.asarray(tokenizer.encode_batch([c[0] for c in images.captions]))
    schedule = train_config.noise_schedule()
    jitted_loss = nnx.jit(diffusion_loss, static_argnames="config")  # one program for all 32 evaluations
    fixed_loss = lambda model: np.mean(  # noqa: E731
        [float(jitted_loss(model, schedule, x0, ids, jax.random.key(k), config=train_config)) for k in range(16)])
    state = new_train_state(model_config, tokenizer, train_config)
    before = fixed_loss(state.model)
    state = train(state, images, progress=False)
    assert len(state.losses) == train_config.steps and np.all(np.isfinite([loss for _, loss in state.losses]))
    # Same t, noise and images before and after: 0.86-0.96 of the loss before over the seeds 0-4; a broken
    # update (no step, or a step uphill) gives 1 or more.
    assert fixed_loss(state.model) < 0.98 * before


def test_compiled_step_on_arrays_equals_the_step_on_modules(dataset, tokenizer, model_config, train_config):
    """The compiled step (split once, jax.jit on donated arrays) updates the model, the
    optimizer and the EMA exactly as nnx.jit(train_step) on the modules does."""
    schedule = train_config.noise_schedule()
    images = jnp.asarray(dataset.images[:8])
    ids = jnp.asarray(tokenizer.encode_batch([c[0] for c in dataset.captions[:8]]))
    empty = jnp.asarray(tokenizer.empty(1)[0])
    on_modules = new_train_state(model_config, tokenizer, train_config)
    on_arrays = new_train_state(model_config, tokenizer, train_config)
    step_on_modules = nnx.jit(train_step, static_argnames="config")
    step_on_arrays = compiled_train_step(on_arrays)
    for i in range(2):
        key, learning_rate = jax.random.key(i), np.float32(1e-3 * (i + 1))
        a = step_on_modules(on_modules.model, on_modules.optimizer, on_modules.ema, schedule, images, ids, empty, key,
                            learning_rate, config=train_config)
        b = step_on_arrays(schedule, images, ids, empty, key, learning_rate)
        np.testing.assert_allclose(float(a), float(b), rtol=1e-5)
    step_on_arrays.sync()
    assert int(on_arrays.optimizer.step[...]) == 2
    for name in ("model", "ema"):
        for x, y in zip(params_of(getattr(on_modules, name)), params_of(getattr(on_arrays, name))):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_runs_with_equal_settings_share_one_compiled_step(tokenizer, model_config, train_config):
    """Two new runs split into equal structures (graphdefs), so the second reuses the first's traced
    and compiled step instead of tracing it again."""
    a, b = (new_train_state(model_config, tokenizer, train_config) for _ in range(2))
    program = lambda s: compiled_train_step(s).program  # noqa: E731
    assert program(a) is program(b)
    other = new_train_state(model_config, tokenizer, dataclasses.replace(train_config, learning_rate=1e-4))
    assert program(other) is not program(a)  # different settings, a different program


class Interrupted(Exception):
    pass


def test_resumed_run_ends_with_the_same_parameters(tmp_path, dataset, tokenizer, model_config, train_config):
    """Crash after the step-3 checkpoint, resume, finish: identical to never stopping."""
    straight = train(new_train_state(model_config, tokenizer, train_config), dataset, tmp_path / "a", progress=False,
                     on_report=lambda state: None)

    def crash(state):
        raise Interrupted

    with pytest.raises(Interrupted):
        train(new_train_state(model_config, tokenizer, train_config), dataset, tmp_path / "b", on_report=crash, progress=False)
    resumed = resume_train_state(tmp_path / "b" / "checkpoint.npz", train_config)
    assert resumed.step == 3
    resumed = train(resumed, dataset, tmp_path / "b", on_report=lambda state: None, progress=False)
    assert resumed.step == straight.step == 6
    for name in ("model", "ema"):
        for a, b in zip(params_of(getattr(straight, name)), params_of(getattr(resumed, name))):
            np.testing.assert_array_equal(a, b)
    assert [round(l, 6) for _, l in resumed.losses] == [round(l, 6) for _, l in straight.losses]


class FakeClock:
    """Seconds that move on by one at each reading (a step takes 1 s), and by more when told to wait:
    a run's time, without waiting for it."""

    def __init__(self, compile_seconds: float = 0.0):
        self.now, self.readings, self.compile_seconds = -1.0, 0, compile_seconds

    def __call__(self) -> float:
        self.readings += 1
        if self.readings == 2:  # `train` reads the clock the second time once its first step has compiled
            self.wait(self.compile_seconds)
        self.now += 1.0
        return self.now

    def wait(self, seconds: float) -> None:
        self.now += seconds


def test_a_budgeted_run_stops_at_its_budget(tmp_path, dataset, tokenizer, model_config, train_config):
    """6 s of budget, one second a step: six steps, whatever `steps` says. Neither 100 s of compiling nor
    50 s of each sample grid are counted."""
    config = dataclasses.replace(train_config, minutes=0.1, steps=1000)
    clock, seen = FakeClock(compile_seconds=100.0), []

    def report(state):
        seen.append((state.step, state.trained_seconds))
        clock.wait(50.0)

    state = train(new_train_state(model_config, tokenizer, config), dataset, tmp_path, progress=False, clock=clock,
                  on_report=report)
    assert state.step == 6 and state.trained_seconds == 6.0 and state.progress == 1.0
    assert seen == [(3, 3.0), (6, 6.0)]  # sample_every 3 steps, and at the end
    step, seconds = Checkpoint(tmp_path / "checkpoint.npz").fields("step", "trained_seconds", kind="training run")
    assert (step, seconds) == (6, 6.0)


def test_a_resumed_budgeted_run_trains_for_the_time_left(tmp_path, dataset, tokenizer, model_config, train_config):
    config = dataclasses.replace(train_config, minutes=0.1)
    train(new_train_state(model_config, tokenizer, config), dataset, tmp_path, progress=False, clock=FakeClock())
    longer = dataclasses.replace(config, minutes=0.15)  # 3 s more
    state = resume_train_state(tmp_path / "checkpoint.npz", longer)
    assert (state.step, state.trained_seconds, state.progress) == (6, 6.0, 6.0 / 9.0)
    state = train(state, dataset, tmp_path, progress=False, clock=FakeClock())
    assert (state.step, state.trained_seconds) == (9, 9.0)
    # With no time left, a resumed run trains no more.
    assert train(resume_train_state(tmp_path / "checkpoint.npz", longer), dataset, tmp_path, progress=False).step == 9


def test_checkpoints_from_before_budgets_still_load():
    """Older headers gave the warm-up in steps: read as the same fraction of the run."""
    saved = dataclasses.asdict(TrainConfig(steps=1500))
    del saved["minutes"], saved["warmup"]
    assert TrainConfig.from_dict(saved | {"warmup_steps": 150}) == TrainConfig(steps=1500, warmup=0.1)


def test_resume_refuses_changed_settings(tmp_path, dataset, tokenizer, model_config, train_config):
    train(new_train_state(model_config, tokenizer, train_config), dataset, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="learning_rate"):
        resume_train_state(tmp_path / "checkpoint.npz", dataclasses.replace(train_config, learning_rate=0.1))


def test_nan_loss_stops_the_run_before_any_checkpoint(tmp_path, dataset, tokenizer, model_config, train_config):
    state = new_train_state(model_config, tokenizer, train_config)
    state.model.unet.stem.kernel[...] = jnp.full_like(state.model.unet.stem.kernel[...], jnp.nan)
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        train(state, dataset, tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.npz").exists()


def test_image_size_mismatch_is_a_clear_error(tokenizer, model_config, train_config):
    from minidiff.datasets import toy_dataset

    with pytest.raises(ValueError, match="32px but the model was built for 16px"):
        train(new_train_state(model_config, tokenizer, train_config), toy_dataset(num_images=8, image_size=32), progress=False)


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


def test_bfloat16_mixed_precision_keeps_float32_weights_and_matches_the_loss(dataset, tokenizer, model_config, train_config):
    runs = {}
    for precision in ("float32", "bfloat16"):
        config = dataclasses.replace(train_config, precision=precision)  # float32: the step other tests compile
        runs[precision] = train(new_train_state(model_config, tokenizer, config), dataset, progress=False)
    params = jax.tree.leaves(nnx.state(runs["bfloat16"].model, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)  # the master weights
    fp32, bf16 = ([loss for _, loss in runs[p].losses] for p in ("float32", "bfloat16"))
    # Same data, noise and initial weights: the losses differ only by bfloat16 rounding (~3 significant digits).
    np.testing.assert_allclose(bf16, fp32, rtol=0.03)
    assert bf16 != fp32  # bfloat16 really was used


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 0, "batch_size must be a whole number of at least 1, got 0"),
    ("steps", 2.5, "steps must be a whole number"),
    ("learning_rate", -1.0, "learning_rate must be a positive number, got -1.0"),
    ("learning_rate", float("nan"), "learning_rate must be a positive number"),
    ("caption_dropout", 1.5, "caption_dropout must be a number between 0 and 1"),
    ("minutes", -1.0, "minutes must be a number of at least 0"),
    ("minutes", float("inf"), "minutes must be a number of at least 0"),
    ("warmup", 1.0, "warmup must be a fraction of the run"),
    ("ema_decay", float("nan"), "ema_decay must be a number between 0 and 1"),
    ("precision", "float16", "precision must be one of"),
    ("schedule", "quadratic", "schedule must be one of"),
])
def test_settings_that_cannot_train_are_refused_when_the_config_is_made(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})
