"""The one training loop (`minidiff.loop`), on the text-to-image model's task: its compiled step, exact resume,
a budget in minutes, one divergence error, and settings checked when made. The autoencoder's, the judge's and
text pretraining's runs go through the same loop (their own tests)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minidiff.loop import TrainConfig, TrainingDiverged, compiled_step, train_step
from minidiff.loop import train as loop_train  # the loop itself, which can be given a clock
from minidiff.machinery.checkpoints import Checkpoint, CheckpointError
from minidiff.training import KIND, TextToImageTraining, resume_run, start_run, train


def params_of(module):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(module, nnx.Param))]


def test_the_compiled_step_on_arrays_equals_the_step_on_modules(dataset, tokenizer, model_config, train_config):
    """The compiled step (split once, jax.jit on donated arrays) updates the model, the
    optimizer and the EMA exactly as nnx.jit(train_step) on the modules does."""
    on_modules, on_arrays = start_run(model_config, train_config), start_run(model_config, train_config)
    task = TextToImageTraining(on_arrays.model, tokenizer, dataset, train_config)
    batch, constants = jax.tree.map(jnp.asarray, (task.batch(0), task.constants()))
    static = (task.loss, train_config.precision, train_config.ema_decay, on_modules.trainable)
    step_on_modules = nnx.jit(train_step, static_argnames="static")
    step_on_arrays = compiled_step(on_arrays, task)
    for i in range(2):
        key, learning_rate = jax.random.key(i), np.float32(1e-3 * (i + 1))
        a, _ = step_on_modules(on_modules.model, on_modules.optimizer, on_modules.ema, batch, constants, key,
                               learning_rate, static=static)
        b, _ = step_on_arrays(batch, constants, key, learning_rate)
        np.testing.assert_allclose(float(a), float(b), rtol=1e-5)
    step_on_arrays.sync()
    assert int(on_arrays.optimizer.step[...]) == 2
    for name in ("model", "ema"):
        for x, y in zip(params_of(getattr(on_modules, name)), params_of(getattr(on_arrays, name))):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_runs_with_equal_settings_share_one_compiled_step(dataset, tokenizer, model_config, train_config):
    """Two new runs split into equal structures (graphdefs), so the second reuses the first's traced
    and compiled step instead of tracing it again; settings the step does not depend on (the learning rate,
    which it is given, the run's length) do not make another program, and one it does (precision) does."""
    a, b = (start_run(model_config, train_config) for _ in range(2))
    program = lambda run: compiled_step(run, TextToImageTraining(run.model, tokenizer, dataset, run.config)).program  # noqa: E731
    assert program(a) is program(b)
    shorter = start_run(model_config, dataclasses.replace(train_config, learning_rate=1e-4, steps=3))
    assert program(shorter) is program(a)
    other = start_run(model_config, dataclasses.replace(train_config, precision="bfloat16"))
    assert program(other) is not program(a)  # another computation, another program


class Interrupted(Exception):
    pass


def test_a_resumed_run_ends_with_the_same_parameters(tmp_path, dataset, tokenizer, model_config, train_config):
    """Crash after the step-3 checkpoint, resume, finish: identical to never stopping."""
    straight = train(start_run(model_config, train_config), dataset, tokenizer, tmp_path / "a.npz", progress=False,
                     on_report=lambda run: None)

    def crash(run):
        raise Interrupted

    with pytest.raises(Interrupted):
        train(start_run(model_config, train_config), dataset, tokenizer, tmp_path / "b.npz", on_report=crash,
              progress=False)
    resumed = resume_run(tmp_path / "b.npz", train_config)
    assert resumed.step == 3
    resumed = train(resumed, dataset, tokenizer, tmp_path / "b.npz", on_report=lambda run: None, progress=False)
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
    50 s of each report are counted."""
    config = dataclasses.replace(train_config, minutes=0.1, steps=1000)
    clock, seen = FakeClock(compile_seconds=100.0), []

    def report(run):
        seen.append((run.step, run.trained_seconds))
        clock.wait(50.0)

    run = start_run(model_config, config)
    run = loop_train(run, TextToImageTraining(run.model, tokenizer, dataset, config), tmp_path / "run.npz",
                     on_report=report, progress=False, clock=clock)
    assert run.step == 6 and run.trained_seconds == 6.0 and run.progress == 1.0
    assert seen == [(3, 3.0), (6, 6.0)]  # report_every 3 steps, and at the end
    step, seconds = Checkpoint(tmp_path / "run.npz").fields("step", "trained_seconds", kind=KIND)
    assert (step, seconds) == (6, 6.0)


def test_a_resumed_budgeted_run_trains_for_the_time_left(tmp_path, dataset, tokenizer, model_config, train_config):
    config = dataclasses.replace(train_config, minutes=0.1)
    path = tmp_path / "run.npz"

    def budgeted(run):
        return loop_train(run, TextToImageTraining(run.model, tokenizer, dataset, run.config), path, progress=False,
                          clock=FakeClock())

    budgeted(start_run(model_config, config))
    longer = dataclasses.replace(config, minutes=0.15)  # 3 s more
    run = resume_run(path, longer)
    assert (run.step, run.trained_seconds, run.progress) == (6, 6.0, 6.0 / 9.0)
    run = budgeted(run)
    assert (run.step, run.trained_seconds) == (9, 9.0)
    # With no time left, a resumed run trains no more.
    assert train(resume_run(path, longer), dataset, tokenizer, path, progress=False).step == 9


def test_resume_refuses_changed_settings(tmp_path, dataset, tokenizer, model_config, train_config):
    train(start_run(model_config, train_config), dataset, tokenizer, tmp_path / "run.npz", progress=False)
    with pytest.raises(CheckpointError, match="learning_rate"):
        resume_run(tmp_path / "run.npz", dataclasses.replace(train_config, learning_rate=0.1))


def test_a_nan_loss_stops_the_run_before_any_checkpoint(tmp_path, dataset, tokenizer, model_config, train_config):
    run = start_run(model_config, train_config)
    run.model.denoiser.stem.kernel[...] = jnp.full_like(run.model.denoiser.stem.kernel[...], jnp.nan)
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        train(run, dataset, tokenizer, tmp_path / "run.npz", progress=False)
    assert not (tmp_path / "run.npz").exists()


def test_without_a_moving_average_the_run_keeps_none(dataset, tokenizer, model_config, train_config):
    run = train(start_run(model_config, dataclasses.replace(train_config, ema_decay=0.0)), dataset, tokenizer,
                progress=False)
    assert run.ema is None and run.trained is run.model and run.step == 6


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 0, "batch_size must be a whole number of at least 1, got 0"),
    ("steps", 2.5, "steps must be a whole number"),
    ("learning_rate", -1.0, "learning_rate must be a positive number, got -1.0"),
    ("learning_rate", float("nan"), "learning_rate must be a positive number"),
    ("minutes", -1.0, "minutes must be a number of at least 0"),
    ("minutes", float("inf"), "minutes must be a number of at least 0"),
    ("warmup", 1.0, "warmup must be a fraction of the run"),
    ("ema_decay", float("nan"), "ema_decay must be at least 0"),
    ("ema_decay", 1.0, "ema_decay must be at least 0"),
    ("precision", "float16", "precision must be one of"),
])
def test_settings_that_cannot_train_are_refused_when_the_config_is_made(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})
