"""Training: the loss, one compiled step, and the loop around it.

One step (Ho et al. 2020, Algorithm 1, with a caption):
  pick images x0 and their captions; blank ~10 % of the captions (caption
  dropout, so the same network also learns the unconditional model that
  classifier-free guidance needs); pick a step t and noise eps; form
  x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps; regress the network
  output on eps (or x0, or v) with a squared error. A flow model
  (`minidiff.flows`) takes the straight path x_t = (1 - t) x0 + t eps instead,
  and regresses the velocity eps - x0.

The loop adds what a real run needs: AdamW with warm-up and decay, an
exponential moving average (EMA) of the weights for sampling, a length in steps
or in minutes of training, a progress bar, checkpoints and exact resume, a
call-back where the caller draws sample grids, and a clear stop on a NaN loss.
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
from tqdm.auto import tqdm

from minidiff.captions import Tokenizer
from minidiff.corruption import (SCHEDULES, NoiseSchedule, make_schedule, network_time, prediction_target, q_sample,
                                 snr, to_model_range)
from minidiff.datasets.base import CaptionedImages, batch_indices, caption_choices, mirror_some, tokenize_dataset
from minidiff.flows import TIME_SAMPLINGS, flow_loss
from minidiff.machinery.checkpoints import Checkpoint, CheckpointError, restore_run, save_run
from minidiff.machinery.compiled_step import CompiledStep
from minidiff.machinery.sharding import check_batch_size, replicate, shard_batch
from minidiff.model import ModelConfig, TextToImage, create_model
from minidiff.optimization import adamw, in_bfloat16, learning_rate_at
from minidiff.superres import training_condition
from minidiff.text_encoders.frozen import embed_captions, trainable, with_pretrained_text_encoder

LOSS_WEIGHTINGS = ("clipped_snr", "min_snr", "none")
PRECISIONS = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000  # the run's length, unless it has a budget in minutes
    minutes: float = 0.0  # a budget of training time (compiling and sample grids not counted); 0 = none, use steps
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup: float = 0.05  # the fraction of the run over which the learning rate climbs from 0 (`learning_rate_at`)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    horizontal_flip: bool = False  # mirror half of each batch (only where captions say nothing of left and right)
    # Diffusion models only (a flow's path and plain squared error need none of these):
    schedule: str = "cosine"  # one of corruption.SCHEDULES
    num_timesteps: int = 1000
    loss_weighting: str = "clipped_snr"  # one of LOSS_WEIGHTINGS (see `loss_weight`)
    min_snr_gamma: float = 5.0  # the cap of both SNR weightings
    # Flow models only: one of flows.TIME_SAMPLINGS, where their training times t are drawn.
    time_sampling: str = "logit_normal"
    precision: str = "float32"  # one of PRECISIONS; "bfloat16": bf16 compute, float32 master weights
    seed: int = 0
    log_every: int = 10  # steps between progress-bar updates (each one waits for the device)
    sample_every: int = 0  # steps between sample grids; 0 = only at the end
    checkpoint_every: int = 500  # steps between checkpoints; 0 = only at the end

    def __post_init__(self):
        """Refuse settings that cannot train, saying which and why (the command line shows these)."""
        whole = lambda value: isinstance(value, (int, np.integer))  # noqa: E731
        for name, smallest in (("steps", 1), ("batch_size", 1), ("log_every", 1), ("num_timesteps", 2),
                               ("seed", 0), ("sample_every", 0), ("checkpoint_every", 0)):
            value = getattr(self, name)
            _require(whole(value) and value >= smallest, name, value, f"a whole number of at least {smallest}")
        for name in ("learning_rate", "grad_clip", "min_snr_gamma"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value > 0, name, value, "a positive number")
        for name in ("weight_decay", "minutes"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value >= 0, name, value, "a number of at least 0")
        _require(0 <= self.warmup < 1, "warmup", self.warmup, "a fraction of the run, at least 0 and below 1")
        for name in ("ema_decay", "caption_dropout"):
            value = getattr(self, name)
            _require(0 <= value <= 1, name, value, "a number between 0 and 1")  # false for NaN too
        for name, options in (("schedule", tuple(SCHEDULES)), ("loss_weighting", LOSS_WEIGHTINGS),
                              ("precision", PRECISIONS), ("time_sampling", TIME_SAMPLINGS)):
            value = getattr(self, name)
            _require(value in options, name, value, f"one of {options}")

    def noise_schedule(self) -> NoiseSchedule:
        """The forward process this run trains on (and its samplers walk back)."""
        return make_schedule(self.schedule, self.num_timesteps)

    @classmethod
    def from_dict(cls, saved: dict) -> "TrainConfig":
        """The config a checkpoint's header holds; headers written before runs had a budget in minutes
        gave the warm-up in steps, and are read as the same fraction of the run."""
        saved = dict(saved)
        if "warmup_steps" in saved:
            saved["warmup"] = min(saved.pop("warmup_steps") / saved["steps"], 0.9)  # a fraction must stay below 1
        return cls(**saved)


def _require(ok: bool, name: str, value, what: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {what}, got {value!r}")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


# --- The loss ----------------------------------------------------------------------


def loss_weight(weighting: str, prediction: str, snr_t, gamma: float):
    """Per-example weight of the squared error.

    Every weighting is a weight w on the x0 error, ||x0_pred - x0||^2, turned
    into the weight on the network's own error (eps's error is SNR times
    smaller than x0's, v's is SNR + 1 times smaller; Salimans & Ho 2022, sec. 4):

    "min_snr": w = min(SNR, gamma) (Hang et al. 2023, eq. 9 and table 1), so
        the nearly clean steps, whose x0 error is tiny, do not dominate.
    "clipped_snr" (the default): w = clip(SNR, 1, gamma), min-SNR with the
        floor of Salimans & Ho's "truncated SNR" weighting. Without the floor,
        w ~ SNR -> 0 at the noisiest steps, and those are where the caption is
        all the network has to go on: nothing of the image is left to see, so
        only the caption says which background to paint. A model trained with
        min-SNR alone learns to ignore words such as "on a sand background"
        (chapter 4 looks at this).
    "none": the plain squared error of the network's output.

    A network predicting eps gets no floor: on the eps error it would be a
    weight of 1 / SNR, about 4e8 at the last cosine step.
    """
    if weighting == "none":
        return jnp.ones_like(snr_t)
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {weighting!r}: choose one of {LOSS_WEIGHTINGS}")
    x0_weight = jnp.minimum(snr_t, gamma)
    if weighting == "clipped_snr" and prediction != "eps":
        x0_weight = jnp.maximum(x0_weight, 1.0)
    return {"eps": x0_weight / snr_t, "x0": x0_weight, "v": x0_weight / (snr_t + 1.0)}[prediction]


def diffusion_loss(model: TextToImage, schedule: NoiseSchedule, x0, token_ids, key, config: TrainConfig,
                   low_res_condition=()):
    """The training loss on one batch: x0 (B, H, W, C) in [-1, 1], token_ids (B, L); an upscaler's
    low-res image and level (`superres.training_condition`) too."""
    t_key, eps_key = jax.random.split(key)
    batch = x0.shape[0]
    t_index = jax.random.randint(t_key, (batch,), 0, schedule.num_steps)  # a step of the forward process per image
    alpha_bar_t = schedule.alpha_bar[t_index]
    eps = jax.random.normal(eps_key, x0.shape)
    xt = q_sample(x0, alpha_bar_t, eps)
    prediction = model.config.prediction
    if config.precision == "bfloat16":
        model, xt = in_bfloat16(model), xt.astype(jnp.bfloat16)
    output = model(xt, network_time(t_index, schedule.num_steps), token_ids,
                   *low_res_condition).astype(jnp.float32)  # the loss in float32
    target = prediction_target(prediction, x0, eps, alpha_bar_t)
    per_example = jnp.mean((output - target) ** 2, axis=(1, 2, 3))
    weight = loss_weight(config.loss_weighting, prediction, snr(alpha_bar_t), config.min_snr_gamma)
    return jnp.mean(weight * per_example)


def training_loss(model: TextToImage, schedule: NoiseSchedule, x0, token_ids, key, config: TrainConfig):
    """The loss the model's objective asks for: `diffusion_loss`, or a flow's (`flows.flow_loss`). An
    upscaler is shown each image of the batch downsampled, at a random noise level (`superres`)."""
    low_res_condition = ()
    if model.config.upscale_from:
        key, low_res_key = jax.random.split(key)
        low_res_condition = training_condition(x0, model.config.upscale_from, low_res_key)
    if model.config.objective == "flow":
        if config.precision == "bfloat16":
            return flow_loss(in_bfloat16(model), x0, token_ids, key, config.time_sampling, jnp.bfloat16,
                             low_res_condition)
        return flow_loss(model, x0, token_ids, key, config.time_sampling, low_res_condition=low_res_condition)
    return diffusion_loss(model, schedule, x0, token_ids, key, config, low_res_condition)


def drop_captions(key, caption, empty_caption, probability: float):
    """Replace each caption by the empty caption with the given probability. A caption is token ids (B, L)
    with the empty one's (L,), or embeddings (a tuple of (B, ...) arrays) with the empty one's ((...) each)."""
    drop = jax.random.uniform(key, (jax.tree.leaves(caption)[0].shape[0],)) < probability
    return jax.tree.map(lambda empty, given: jnp.where(drop.reshape(-1, *[1] * empty.ndim), empty[None], given),
                        empty_caption, caption)


def train_step(model, optimizer, ema, schedule, images, caption, empty_caption, key, learning_rate,
               config: TrainConfig):
    """One optimisation step at `learning_rate`; returns the loss. Updates model, optimizer and ema in place.
    `images`: uint8 pixels, or a latent model's latents (`minidiff.latents`), which are used as they are.
    `caption`: token ids, or under a frozen text encoder the captions' cached embeddings.

    Plain Python: `train` runs it compiled, as a `machinery.compiled_step.CompiledStep`."""
    x0 = to_model_range(images) if images.dtype == jnp.uint8 else images  # on the device
    drop_key, loss_key = jax.random.split(key)
    caption = drop_captions(drop_key, caption, empty_caption, config.caption_dropout)
    # Only the trainable parameters are differentiated: a frozen text encoder gets no gradient at all.
    updated = trainable(model.config)
    loss, grads = nnx.value_and_grad(training_loss, argnums=nnx.DiffState(0, updated))(
        model, schedule, x0, caption, loss_key, config)
    optimizer.update(model, grads, learning_rate=learning_rate)
    # EMA with a warm-up: early on, average over fewer steps (as in Karras et al. 2022's EDM code).
    step = optimizer.step[...]
    decay = jnp.minimum(config.ema_decay, (1.0 + step) / (10.0 + step))
    ema_params = nnx.state(ema, updated)
    new_params = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema_params, nnx.state(model, updated))
    nnx.update(ema, new_params)
    return loss


def make_optimizer(model: TextToImage, config: TrainConfig) -> nnx.Optimizer:
    """The optimizer of `model`'s trainable parameters (its state: the Adam moments and the step count)."""
    return nnx.Optimizer(model, adamw(config.weight_decay, config.grad_clip), wrt=trainable(model.config))


# --- The loop ----------------------------------------------------------------------


@dataclasses.dataclass
class TrainState:
    """Everything a run carries from step to step, and what a checkpoint holds."""

    model: TextToImage
    ema: TextToImage
    optimizer: nnx.Optimizer
    tokenizer: Tokenizer
    config: TrainConfig
    step: int = 0
    trained_seconds: float = 0.0  # time spent training so far, compiling and sample grids not counted
    losses: list = dataclasses.field(default_factory=list)  # (step, loss) pairs

    @property
    def progress(self) -> float:
        """The fraction of the run done: of its steps, or of its budget in minutes."""
        if self.config.minutes:
            return min(1.0, self.trained_seconds / (60.0 * self.config.minutes))
        return min(1.0, self.step / self.config.steps)


def new_train_state(model_config: ModelConfig, tokenizer: Tokenizer, config: TrainConfig,
                    text_encoder: Checkpoint | None = None) -> TrainState:
    """A new run; with `text_encoder`, a pretrained encoder's file (`text_encoders.frozen`), its weights."""
    model = create_model(model_config, seed=config.seed)
    if text_encoder is not None:
        with_pretrained_text_encoder(model, text_encoder)
    # The EMA starts equal to the model, in its own buffers: a training step donates (overwrites) both.
    graphdef, params = nnx.split(model)
    ema = nnx.merge(graphdef, jax.tree.map(jnp.copy, params))
    return TrainState(model, ema, make_optimizer(model, config), tokenizer, config)


def resume_train_state(path, config: TrainConfig | None = None) -> TrainState:
    """Reopen a run from its checkpoint (`machinery.checkpoints.save_run`); `config` may change the run's
    length (`steps`, `minutes`), nothing else. A run with a budget continues for the time it has left."""
    saved, model_config, tokenizer = Checkpoint(path).fields("train_config", "model_config", "tokenizer",
                                                              kind="training run")
    saved = TrainConfig.from_dict(saved)
    if config is not None and dataclasses.replace(config, steps=saved.steps, minutes=saved.minutes) != saved:
        changed = [f.name for f in dataclasses.fields(saved) if getattr(saved, f.name) != getattr(config, f.name)]
        raise CheckpointError(
            f"cannot resume {path} with different settings ({', '.join(changed)}); "
            "only the run's length (steps or minutes) may change"
        )
    state = new_train_state(ModelConfig.from_dict(model_config), Tokenizer.from_dict(tokenizer), config or saved)
    return restore_run(path, state)


def compiled_train_step(state: TrainState) -> CompiledStep:
    """`train_step` on the state's model, optimizer and EMA, compiled: what `train` runs each step."""
    return CompiledStep(train_step, (state.model, state.optimizer, state.ema), state.config)


def _checked_losses(pending, config: TrainConfig) -> list[tuple[int, float]]:
    """The losses of the last steps, read back from the device; a NaN or infinity stops the run."""
    values = [(step, float(loss)) for step, loss in pending]
    bad = [step for step, loss in values if not np.isfinite(loss)]
    if bad:
        raise TrainingDiverged(
            f"the loss became {values[-1][1]} at step {bad[0]}; lower the learning rate "
            f"(now {config.learning_rate}) or the gradient clip (now {config.grad_clip})"
        )
    return values


def train(state: TrainState, dataset: CaptionedImages, out_dir=None, on_report=None, progress: bool = True,
          mesh=None, clock=time.perf_counter) -> TrainState:
    """Train until the run's steps are done or its budget (`config.minutes`) spent, from wherever `state` is.

    With `out_dir`, writes out_dir/checkpoint.npz every checkpoint_every steps
    and at the end. `on_report(state)` is called every sample_every steps and
    at the end (the CLI saves sample grids and the loss curve there). With a
    `mesh` (`minidiff.machinery.sharding.data_mesh()`), each batch is split over
    its devices and the parameters replicated: data-parallel training.

    The time trained is read off `clock` (seconds). Neither the first step of
    each call, which compiles the program, nor `on_report` is counted. So a
    run with a budget is not reproducible to the bit: how many steps it makes,
    and at which learning rates, depend on the machine's speed.
    """
    config = state.config
    if config.minutes and jax.process_count() > 1:
        raise ValueError("a budget in minutes is read off each host's own clock, so hosts could stop after "
                         "different steps; give a multi-host run its length in steps")
    if dataset.image_size != state.model.config.denoiser.image_size:
        raise ValueError(
            f"dataset images are {dataset.image_size}px but the model was built for "
            f"{state.model.config.denoiser.image_size}px"
        )
    put_batch = jnp.asarray
    if mesh is not None:
        check_batch_size(config.batch_size, mesh)
        for module in (state.model, state.optimizer, state.ema):
            replicate(module, mesh)
        put_batch = lambda rows: shard_batch(rows, mesh)  # noqa: E731
    schedule = config.noise_schedule()
    ids, counts = tokenize_dataset(dataset, state.tokenizer)
    empty_caption = jnp.asarray(state.tokenizer.empty(1)[0])
    cache = None
    if state.model.config.text.frozen:  # every caption encoded once, the empty one too
        cache, empty_caption = embed_captions(state.model.text_encoder, ids, state.tokenizer.empty(1))
    base_key = jax.random.key(config.seed)
    checkpoint_path = Path(out_dir) / "checkpoint.npz" if out_dir is not None else None

    step_on_device = compiled_train_step(state)
    pending = []  # (step, loss on the device), read back every log_every steps, not every step
    bar = _progress_bar(state, progress)
    first_step, last_time = state.step, clock()
    window_start = (state.step, state.trained_seconds)  # where the speed shown on the bar is measured from
    try:
        while state.progress < 1.0:
            step = state.step
            index = batch_indices(len(dataset), config.batch_size, config.seed, step)
            choice = caption_choices(counts[index], config.seed, step)
            images = dataset.images[index]
            if config.horizontal_flip:
                images = mirror_some(images, config.seed, step)
            learning_rate = np.float32(learning_rate_at(state.progress, config.learning_rate, config.warmup))
            caption = ids[index, choice] if cache is None else tuple(e[index, choice] for e in cache)
            loss = step_on_device(schedule, put_batch(images), jax.tree.map(put_batch, caption), empty_caption,
                                  jax.random.fold_in(base_key, step), learning_rate)
            if step == first_step:  # compiled (or loaded from the cache) and run: the clock starts now
                loss.block_until_ready()
                last_time = clock()
            state.step += 1
            pending.append((state.step, loss))
            now = clock()
            state.trained_seconds += now - last_time
            last_time = now

            done = state.progress >= 1.0
            save = checkpoint_path is not None and (done or _every(state.step, config.checkpoint_every))
            report = on_report is not None and (done or _every(state.step, config.sample_every))
            if len(pending) >= config.log_every or save or report or done:
                # Every loss is checked before anything is saved, so a NaN never reaches a checkpoint.
                values = _checked_losses(pending, config)
                pending.clear()
                state.losses.extend(values)
                steps, seconds = state.step - window_start[0], state.trained_seconds - window_start[1]
                speed = steps * config.batch_size / seconds if seconds > 0 else float("nan")
                _show(bar, state, loss=np.mean([v for _, v in values]), img_per_s=speed)
                window_start = (state.step, state.trained_seconds)
            if save or report:
                step_on_device.sync()
            if save:
                save_run(checkpoint_path, state)
            if report:
                on_report(state)
                last_time = clock()  # the report's time is not training's
    finally:  # however the loop ends (done, a NaN, Ctrl-C), the modules hold the latest arrays
        step_on_device.sync()
        bar.close()
    return state


def _progress_bar(state: TrainState, progress: bool) -> tqdm:
    """A bar in steps, or in seconds of the budget for a run with one."""
    if state.config.minutes:
        return tqdm(total=round(60 * state.config.minutes), initial=round(state.trained_seconds),
                    disable=not progress, desc="training", bar_format="{l_bar}{bar}| {n}/{total} s{postfix}")
    return tqdm(total=state.config.steps, initial=state.step, disable=not progress, desc="training", unit="step")


def _show(bar: tqdm, state: TrainState, loss: float, img_per_s: float) -> None:
    bar.update((round(state.trained_seconds) if state.config.minutes else state.step) - bar.n)
    extra = {"step": state.step} if state.config.minutes else {}
    bar.set_postfix(**extra, loss=f"{loss:.4f}", img_per_s=f"{img_per_s:.0f}")


def _every(step: int, interval: int) -> bool:
    return interval > 0 and step % interval == 0
