"""The training loop: one loop for everything that trains.

The denoiser (`minidiff.training`), the autoencoder (`minidiff.latents`), the
judge (`minidiff.evaluation.judge`) and a text encoder pretrained on text
(`minidiff.text_encoders.masked_language_model`) all train here. Each brings a
`Task` — its loss, its batches, and what its checkpoint records — and the loop
does the rest, the same way for all:

  - AdamW at a learning rate that follows the fraction of the run done
    (`optimization.learning_rate_at`), for a number of steps or a budget of
    minutes;
  - an exponential moving average (EMA) of the weights, if asked;
  - mixed precision, if asked (`minidiff.precision`);
  - a progress bar (a line every few seconds in a log), and the loss read
    back from the device every few steps, where a NaN stops the run with one
    error, `TrainingDiverged`, before anything is saved;
  - checkpoints, and exact resume: a batch depends only on the seed and the
    step, so a resumed run sees the batches an uninterrupted one would have;
  - a report (sample grids, say) every so many steps, not counted as training time;
  - data parallelism over a mesh of devices (`machinery.sharding`).

How a step runs fast (`machinery.compiled_step`) and how a checkpoint is
written (`machinery.checkpoints`) live with the run's machinery.
"""

import dataclasses
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from minidiff.machinery.checkpoints import Checkpoint, CheckpointError, save_checkpoint
from minidiff.machinery.compiled_step import CompiledStep
from minidiff.machinery.progress import Progress
from minidiff.machinery.sharding import check_batch_size, replicate, replicated, shard_batch
from minidiff.optimization import adamw, learning_rate_at
from minidiff.precision import PRECISIONS, compute_dtype, in_bfloat16


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000  # the run's length, unless it has a budget in minutes
    minutes: float = 0.0  # a budget of training time (compiling, reports, saving not counted); 0 = none: steps
    batch_size: int = 64
    learning_rate: float = 1e-3  # the peak of `optimization.learning_rate_at`
    warmup: float = 0.05  # the fraction of the run over which the learning rate climbs from 0
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # the weights' moving average; 0 = none kept
    precision: str = "float32"  # one of PRECISIONS; "bfloat16": bf16 compute, float32 master weights
    seed: int = 0  # of initialisation, batches and noise
    log_every: int = 10  # steps between reading the loss back (each read waits for the device)
    checkpoint_every: int = 500  # steps between checkpoints; 0 = only at the end
    report_every: int = 0  # steps between reports (sample grids); 0 = only at the end

    def __post_init__(self):
        """Refuse settings that cannot train, saying which and why (the command line shows these)."""
        for name, smallest in (("steps", 1), ("batch_size", 1), ("log_every", 1), ("seed", 0),
                               ("checkpoint_every", 0), ("report_every", 0)):
            value = getattr(self, name)
            _require(isinstance(value, (int, np.integer)) and value >= smallest, name, value,
                     f"a whole number of at least {smallest}")
        for name in ("learning_rate", "grad_clip"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value > 0, name, value, "a positive number")
        for name in ("weight_decay", "minutes"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value >= 0, name, value, "a number of at least 0")
        _require(0 <= self.warmup < 1, "warmup", self.warmup, "a fraction of the run, at least 0 and below 1")
        _require(0 <= self.ema_decay < 1, "ema_decay", self.ema_decay, "at least 0 (none) and below 1")
        _require(self.precision in PRECISIONS, "precision", self.precision, f"one of {PRECISIONS}")

    @property
    def length(self) -> str:
        return f"{self.minutes:g} minutes" if self.minutes else f"{self.steps} steps"


def _require(ok: bool, name: str, value, what: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {what}, got {value!r}")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Task:
    """What one kind of training brings to the loop.

    `loss(model, batch, constants, key, dtype) -> (loss, metrics)` is a plain function of module
    level, set as `loss = staticmethod(...)` (the compiled step is shared by every run that has
    the same one, the same modules and precision): `batch` is what
    `batch(step)` returns, a tuple of arrays of `batch_size` rows, split over the devices;
    `constants`, what `constants()` returns once, replicated; `dtype` the compute type of the
    run's precision; `metrics` a dict of scalars recorded beside the loss. `kind` and `header()`
    say what the checkpoint is; `before_save(model)` readies the model to be saved.
    """

    kind = "training run"
    description = "training"  # shown on the progress bar
    unit = "images"  # what a batch's rows are, for the speed shown
    loss = None

    def batch(self, step: int) -> tuple:
        raise NotImplementedError

    def constants(self) -> tuple:
        return ()

    def header(self) -> dict:
        return {}

    def before_save(self, model: nnx.Module) -> None:
        pass


@dataclasses.dataclass
class Run:
    """Everything a run carries from step to step, and what a checkpoint holds."""

    model: nnx.Module
    optimizer: nnx.Optimizer
    ema: nnx.Module | None  # None without a moving average (ema_decay = 0)
    config: TrainConfig
    trainable: nnx.filterlib.Filter = nnx.Param  # the parameters the optimizer updates
    step: int = 0
    trained_seconds: float = 0.0  # time spent training so far, compiling and reports not counted
    history: list = dataclasses.field(default_factory=list)  # {"step": s, "loss": l, **metrics} every log_every

    @property
    def progress(self) -> float:
        """The fraction of the run done: of its steps, or of its budget in minutes."""
        if self.config.minutes:
            return min(1.0, self.trained_seconds / (60.0 * self.config.minutes))
        return min(1.0, self.step / self.config.steps)

    @property
    def losses(self) -> list[tuple[int, float]]:
        """(step, loss) pairs, for a loss curve."""
        return [(entry["step"], entry["loss"]) for entry in self.history]

    @property
    def trained(self) -> nnx.Module:
        """The weights to use: the moving average where one is kept."""
        return self.ema if self.ema is not None else self.model


def new_run(model: nnx.Module, config: TrainConfig, trainable: nnx.filterlib.Filter = nnx.Param) -> Run:
    """A run from step 0 that trains the `trainable` parameters of `model`."""
    ema = None
    if config.ema_decay:  # the EMA starts equal to the model, in its own buffers (a step donates both)
        graphdef, params = nnx.split(model)
        ema = nnx.merge(graphdef, jax.tree.map(jnp.copy, params))
    optimizer = nnx.Optimizer(model, adamw(config.weight_decay, config.grad_clip), wrt=trainable)
    return Run(model, optimizer, ema, config, trainable)


def batch_indices(num_images: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The image indices of training batch `step`: a pure function of (seed, step).

    Every epoch is a fresh permutation of the dataset. Because a batch depends
    on nothing but the seed and the step number, a resumed run sees exactly the
    batches an uninterrupted run would have seen.
    """
    start = step * batch_size
    indices = []
    while len(indices) < batch_size:
        epoch, offset = divmod(start + len(indices), num_images)
        order = np.random.default_rng([seed, epoch]).permutation(num_images)
        indices.extend(order[offset : offset + batch_size - len(indices)])
    return np.asarray(indices)


# --- One step ------------------------------------------------------------------------


def train_step(model, optimizer, ema, batch, constants, key, learning_rate, static):
    """One optimisation step at `learning_rate`; returns (loss, metrics). Updates the modules in place.
    `static` is (the task's loss, the precision, the EMA's decay, the trainable filter): what the compiled
    program depends on, and nothing else of the run's settings.

    Plain Python: `train` runs it compiled, as a `machinery.compiled_step.CompiledStep`."""
    loss_fn, precision, ema_decay, trainable = static

    def loss_of(model):
        computing = in_bfloat16(model) if precision == "bfloat16" else model
        return loss_fn(computing, batch, constants, key, compute_dtype(precision))

    # Only the trainable parameters are differentiated: a frozen part gets no gradient at all.
    (loss, metrics), grads = nnx.value_and_grad(loss_of, argnums=nnx.DiffState(0, trainable), has_aux=True)(model)
    optimizer.update(model, grads, learning_rate=learning_rate)
    if ema is not None:
        # With a warm-up: early on, average over fewer steps (as in Karras et al. 2022's EDM code).
        step = optimizer.step[...]
        decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
        averaged = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, nnx.state(ema, trainable),
                                nnx.state(model, trainable))
        nnx.update(ema, averaged)
    return loss, metrics


def compiled_step(run: Run, task: Task) -> CompiledStep:
    """`train_step` on the run's modules, compiled: what `train` calls each step."""
    static = (task.loss, run.config.precision, run.config.ema_decay, run.trainable)
    return CompiledStep(train_step, (run.model, run.optimizer, run.ema), static)


# --- Checkpoints -----------------------------------------------------------------------


def save_run(path, run: Run, task: Task) -> Path:
    """The run's modules and a header: the task's (`Task.header`), the run's settings, step, time and history."""
    header = {"kind": task.kind, **task.header(), "train_config": dataclasses.asdict(run.config), "step": run.step,
              "trained_seconds": run.trained_seconds, "history": run.history}
    modules = {"model": run.model, "optimizer": run.optimizer} | ({"ema": run.ema} if run.ema is not None else {})
    return save_checkpoint(path, header, **modules)


def saved_train_config(path, kind: str) -> TrainConfig:
    (config,) = Checkpoint(path).fields("train_config", kind=kind)
    return TrainConfig(**config)


def resumed_config(path, kind: str, config: TrainConfig | None = None) -> TrainConfig:
    """The settings a run saved at `path` continues with: its own, or `config`, which may change its
    length (steps or minutes) and nothing else. A run with a budget continues for the time it has left."""
    saved = saved_train_config(path, kind)
    if config is None:
        return saved
    if dataclasses.replace(config, steps=saved.steps, minutes=saved.minutes) != saved:
        changed = [f.name for f in dataclasses.fields(saved) if getattr(saved, f.name) != getattr(config, f.name)]
        raise CheckpointError(f"cannot resume {path} with different settings ({', '.join(changed)}); only the "
                              "run's length (steps or minutes) may change")
    return config


def restore_run(path, run: Run, kind: str) -> Run:
    """Load what `save_run` saved into `run`, a new Run built with the saved configs (in place); returns it."""
    checkpoint = Checkpoint(path)
    step, seconds, history = checkpoint.fields("step", "trained_seconds", "history", kind=kind)
    for name in ("model", "optimizer") + (("ema",) if run.ema is not None else ()):
        checkpoint.restore(name, getattr(run, name))
    run.step, run.trained_seconds, run.history = int(step), float(seconds), list(history)
    return run


# --- The loop --------------------------------------------------------------------------


def _checked(pending, config: TrainConfig) -> list[dict]:
    """The losses and metrics of the last steps, read back from the device; a NaN or infinity stops the run."""
    entries = [{"step": step, "loss": float(loss), **{k: float(v) for k, v in metrics.items()}}
               for step, (loss, metrics) in pending]
    bad = [entry for entry in entries if not np.isfinite(entry["loss"])]
    if bad:
        raise TrainingDiverged(f"the loss became {bad[0]['loss']} at step {bad[0]['step']}; lower the learning rate "
                               f"(now {config.learning_rate}) or the gradient clip (now {config.grad_clip})")
    return entries


def _every(step: int, interval: int) -> bool:
    return interval > 0 and step % interval == 0


def train(run: Run, task: Task, checkpoint=None, on_report=None, progress: bool = True, mesh=None,
          clock=time.perf_counter) -> Run:
    """Train until the run's steps are done or its budget (`config.minutes`) spent, from wherever `run` is.

    With `checkpoint` (a path), saves the run there every checkpoint_every steps and at the end.
    `on_report(run)` is called every report_every steps and at the end. With a `mesh`
    (`machinery.sharding.data_mesh()`), each batch is split over its devices and the modules
    replicated: data-parallel training.

    The time trained is read off `clock` (seconds). Neither the first step of each call, which
    compiles the program, nor a report, nor a checkpoint's writing is counted. So a run with a
    budget is not reproducible to the bit: how many steps it makes, and at which learning rates,
    depend on the machine.
    """
    config = run.config
    if config.minutes and jax.process_count() > 1:
        raise ValueError("a budget in minutes is read off each host's own clock, so hosts could stop after "
                         "different steps; give a multi-host run its length in steps")
    put_rows, constants = jnp.asarray, jax.tree.map(jnp.asarray, task.constants())
    if mesh is not None:
        check_batch_size(config.batch_size, mesh)
        for module in (run.model, run.optimizer, run.ema):
            if module is not None:
                replicate(module, mesh)
        put_rows = lambda rows: shard_batch(rows, mesh)  # noqa: E731
        constants = replicated(constants, mesh)
    base_key = jax.random.key(config.seed)
    step_on_device = compiled_step(run, task)
    pending = []  # (step, (loss, metrics) on the device), read back every log_every steps, not every step
    budget = config.minutes
    shown = Progress(round(60 * budget) if budget else config.steps, task.description, unit="s" if budget else "step",
                     initial=round(run.trained_seconds) if budget else run.step, enabled=progress)
    first_step, last_time = run.step, clock()
    window_start = [run.step, run.trained_seconds]  # where the speed shown is measured from

    def read_back():
        """Read the pending losses back (which waits for the device) into the history, and show them."""
        run.history.extend(_checked(pending, config))
        pending.clear()
        steps, seconds = run.step - window_start[0], run.trained_seconds - window_start[1]
        speed = steps * config.batch_size / seconds if seconds > 0 else float("nan")
        shown.update(round(run.trained_seconds) if budget else run.step, **({"step": run.step} if budget else {}),
                     **{name: f"{value:.4g}" for name, value in run.history[-1].items() if name != "step"},
                     **{f"{task.unit}/s": f"{speed:.0f}"})
        window_start[:] = [run.step, run.trained_seconds]

    try:
        while run.progress < 1.0:
            step = run.step
            batch = jax.tree.map(put_rows, task.batch(step))
            learning_rate = np.float32(learning_rate_at(run.progress, config.learning_rate, config.warmup))
            result = step_on_device(batch, constants, jax.random.fold_in(base_key, step), learning_rate)
            if step == first_step:  # compiled (or loaded from the cache) and run: the clock starts now
                jax.block_until_ready(result)
                last_time = clock()
            run.step += 1
            pending.append((run.step, result))
            if len(pending) >= config.log_every:
                read_back()  # before the clock: the time the device still needed is training time too
            now = clock()
            run.trained_seconds += now - last_time
            last_time = now

            done = run.progress >= 1.0
            save = checkpoint is not None and (done or _every(run.step, config.checkpoint_every))
            report = on_report is not None and (done or _every(run.step, config.report_every))
            if pending and (save or report or done):
                read_back()  # every loss is checked before anything is saved: a NaN never reaches a checkpoint
            if save or report:
                step_on_device.sync()
            if save:
                task.before_save(run.trained)
                step_on_device.reload()
                save_run(checkpoint, run, task)
            if report:
                on_report(run)
            if save or report:
                last_time = clock()  # neither is training time
    finally:  # however the loop ends (done, a NaN, Ctrl-C), the modules hold the latest arrays
        step_on_device.sync()
        shown.close()
    return run
