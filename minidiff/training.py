"""Training: the loss, one compiled step, and the loop around it.

One step (Ho et al. 2020, Algorithm 1, with a caption):
  pick images x0 and their captions; blank ~10 % of the captions (caption
  dropout, so the same network also learns the unconditional model that
  classifier-free guidance needs); pick a step t and noise eps; form
  x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps; regress the network
  output on eps (or x0, or v) with a squared error.

The loop adds what a real run needs: AdamW with warm-up, an exponential moving
average (EMA) of the weights for sampling, a progress bar, a loss curve and
sample grids saved as PNG, atomic checkpoints, exact resume, and a clear stop
on a NaN loss.
"""

import dataclasses
import time
from functools import cache
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from minidiff.captions import Tokenizer
from minidiff.checkpoints import Checkpoint, CheckpointError, save_checkpoint
from minidiff.corruption import NoiseSchedule, continuous_time, make_schedule, prediction_target, q_sample, snr
from minidiff.datasets.base import CaptionedImages, batch_indices, caption_choices, mirror_some
from minidiff.model import ModelConfig, TextToImage, create_model


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    horizontal_flip: bool = False  # mirror half of each batch (only where captions say nothing of left and right)
    schedule: str = "cosine"
    num_timesteps: int = 1000
    loss_weighting: str = "clipped_snr"  # one of LOSS_WEIGHTINGS (see `loss_weight`)
    min_snr_gamma: float = 5.0  # the cap of both SNR weightings
    precision: str = "float32"  # "bfloat16": bf16 weights and activations in the step, float32 master weights
    seed: int = 0
    log_every: int = 10  # steps between progress-bar updates (each one waits for the device)
    sample_every: int = 0  # steps between sample grids; 0 = only at the end
    checkpoint_every: int = 500


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


# --- The loss ----------------------------------------------------------------------


LOSS_WEIGHTINGS = ("clipped_snr", "min_snr", "none")


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


PRECISIONS = ("float32", "bfloat16")


def in_bfloat16(model: nnx.Module) -> nnx.Module:
    """A copy of `model` whose floating-point parameters are bfloat16.

    Mixed precision (Micikevicius et al. 2018): the optimizer keeps and updates
    float32 weights (small updates would vanish in bfloat16's 8-bit mantissa),
    while the forward and backward passes run on bfloat16 copies — half the
    memory traffic, and the fast matrix units of GPUs and TPUs. Made inside the
    differentiated function, the cast passes gradients back to the float32 weights.
    """
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    return nnx.merge(graphdef, state)


def diffusion_loss(model: TextToImage, schedule: NoiseSchedule, x0, token_ids, key, config: TrainConfig):
    """The training loss on one batch: x0 (B, H, W, C) in [-1, 1], token_ids (B, L)."""
    if config.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {config.precision!r}: choose one of {PRECISIONS}")
    t_key, eps_key = jax.random.split(key)
    batch = x0.shape[0]
    t = jax.random.randint(t_key, (batch,), 0, schedule.num_steps)
    alpha_bar_t = schedule.alpha_bar[t]
    eps = jax.random.normal(eps_key, x0.shape)
    xt = q_sample(x0, alpha_bar_t, eps)
    prediction = model.config.prediction
    if config.precision == "bfloat16":
        model, xt = in_bfloat16(model), xt.astype(jnp.bfloat16)
    output = model(xt, continuous_time(t, schedule.num_steps), token_ids).astype(jnp.float32)  # the loss in float32
    target = prediction_target(prediction, x0, eps, alpha_bar_t)
    per_example = jnp.mean((output - target) ** 2, axis=(1, 2, 3))
    weight = loss_weight(config.loss_weighting, prediction, snr(alpha_bar_t), config.min_snr_gamma)
    return jnp.mean(weight * per_example)


def drop_captions(key, token_ids, empty_ids, probability: float):
    """Replace each caption by the empty caption with the given probability."""
    drop = jax.random.uniform(key, (token_ids.shape[0], 1)) < probability
    return jnp.where(drop, empty_ids[None, :], token_ids)


def train_step(model, optimizer, ema, schedule, images_uint8, token_ids, empty_ids, key, config: TrainConfig):
    """One optimisation step; returns the loss. Updates model, optimizer and ema in place.

    Plain Python: `compile_train_step` compiles it, and `train` calls that
    through `CompiledTrainStep`."""
    x0 = images_uint8.astype(jnp.float32) / 127.5 - 1.0  # uint8 -> [-1, 1] on the device
    drop_key, loss_key = jax.random.split(key)
    token_ids = drop_captions(drop_key, token_ids, empty_ids, config.caption_dropout)
    loss, grads = nnx.value_and_grad(diffusion_loss)(model, schedule, x0, token_ids, loss_key, config)
    optimizer.update(model, grads)
    # EMA with a warm-up: early on, average over fewer steps (as in Karras et al. 2022's EDM code).
    step = optimizer.step[...]
    decay = jnp.minimum(config.ema_decay, (1.0 + step) / (10.0 + step))
    ema_params = nnx.state(ema, nnx.Param)
    new_params = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema_params, nnx.state(model, nnx.Param))
    nnx.update(ema, new_params)
    return loss


@cache
def compile_train_step(graphdef, treedef, config: TrainConfig):
    """`train_step` as a compiled pure function of the modules' arrays, in one flat list:
    (arrays, schedule, images_uint8, token_ids, empty_ids, key) -> (new arrays, loss).

    `graphdef` (the modules' structure, from `nnx.split`) and `treedef` (how the
    arrays sit in their `nnx.State`) are baked into the program rather than passed
    to every call as static arguments: jax.jit hashes those on every call, and
    hashing the small preset's graphdef took about 20 ms. One program per
    (structure, config), shared by every run of it in this process (hence the cache)."""

    def step_on_arrays(arrays, schedule, images_uint8, token_ids, empty_ids, key):
        model, optimizer, ema = nnx.merge(graphdef, jax.tree.unflatten(treedef, arrays))
        loss = train_step(model, optimizer, ema, schedule, images_uint8, token_ids, empty_ids, key, config)
        new_arrays, new_treedef = jax.tree.flatten(nnx.state((model, optimizer, ema)))
        assert new_treedef == treedef, "the train step changed the modules' structure"
        return new_arrays, loss

    return jax.jit(step_on_arrays, donate_argnums=0)


class CompiledTrainStep:
    """The train step of a run, called on a flat list of arrays rather than on modules.

    `nnx.jit(train_step)` would compile the same program, but on every call it
    walks the Python object graph of the model, the optimizer and the EMA to
    collect their arrays, and again to write the results back: about 40 ms
    per step on a 2-core CPU, a quarter of a tiny-preset step. So the
    modules are split once into their structure (`graphdef`) and their
    arrays (Flax's "functional training loop"), and the arrays flattened into
    a list: each step passes only that list to the program of
    `compile_train_step` and gets the new one back. Handing JAX a list of
    arrays, rather than an `nnx.State` of Variables to flatten and a graphdef
    to hash, took a small-preset step's dispatch from ~27 to ~6 ms on one CPU
    device. The arrays are donated: XLA writes the new weights and Adam
    moments over the old ones instead of allocating a second copy of them
    every step.

    The modules see the new arrays only after `sync()`; in between, the arrays
    they hold have been donated (deleted). Sync before reading them.
    """

    def __init__(self, model, optimizer, ema, config: TrainConfig):
        self.modules = (model, optimizer, ema)
        graphdef, state = nnx.split(self.modules)
        self.arrays, self.treedef = jax.tree.flatten(state)
        self.program = compile_train_step(graphdef, self.treedef, config)

    def __call__(self, schedule, images_uint8, token_ids, empty_ids, key):
        """One step on the current arrays; returns the loss (on the device)."""
        self.arrays, loss = self.program(self.arrays, schedule, images_uint8, token_ids, empty_ids, key)
        return loss

    def sync(self):
        """Put the current arrays back into the model, optimizer and EMA modules."""
        nnx.update(self.modules, jax.tree.unflatten(self.treedef, self.arrays))


@cache
def adamw_transform(config: TrainConfig) -> optax.GradientTransformation:
    """AdamW (Loshchilov & Hutter 2019) with linear warm-up, cosine decay and gradient clipping.

    One object per configuration (hence the cache): the optimizer keeps it in
    its static structure, so a run with a new but equal one would look like a
    new program to `compile_train_step` and be traced again (seconds)."""
    learning_rate = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, max(config.warmup_steps, 1), max(config.steps, config.warmup_steps + 1),
        end_value=0.1 * config.learning_rate,
    )
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(learning_rate, weight_decay=config.weight_decay),
    )


def make_optimizer(model: TextToImage, config: TrainConfig) -> nnx.Optimizer:
    """The optimizer of `model`'s parameters (its state: the Adam moments and the step count)."""
    return nnx.Optimizer(model, adamw_transform(config), wrt=nnx.Param)


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
    losses: list = dataclasses.field(default_factory=list)  # (step, loss) pairs

    def save(self, path) -> Path:
        header = {
            "step": self.step,
            "model_config": self.model.config.to_dict(),
            "train_config": dataclasses.asdict(self.config),
            "tokenizer": self.tokenizer.to_dict(),
            "losses": self.losses,
        }
        return save_checkpoint(path, header, model=self.model, ema=self.ema, optimizer=self.optimizer)


def new_train_state(model_config: ModelConfig, tokenizer: Tokenizer, config: TrainConfig) -> TrainState:
    model = create_model(model_config, seed=config.seed)
    # The EMA starts equal to the model, in its own buffers: a training step donates (overwrites) both.
    graphdef, params = nnx.split(model)
    ema = nnx.merge(graphdef, jax.tree.map(jnp.copy, params))
    return TrainState(model, ema, make_optimizer(model, config), tokenizer, config)


def resume_train_state(path, config: TrainConfig | None = None) -> TrainState:
    """Reopen a run from its checkpoint; `config` may extend `steps`, nothing else."""
    checkpoint = Checkpoint(path)
    header = checkpoint.header
    saved = TrainConfig(**header["train_config"])
    if config is not None and dataclasses.replace(config, steps=saved.steps) != saved:
        changed = [f.name for f in dataclasses.fields(saved) if getattr(saved, f.name) != getattr(config, f.name)]
        raise CheckpointError(
            f"cannot resume {path} with different settings ({', '.join(changed)}); "
            "only the number of steps may change"
        )
    config = config or saved
    state = new_train_state(ModelConfig.from_dict(header["model_config"]), Tokenizer.from_dict(header["tokenizer"]), config)
    for name in ("model", "ema", "optimizer"):
        checkpoint.restore(name, getattr(state, name))
    state.step = int(header["step"])
    state.losses = [tuple(x) for x in header["losses"]]
    return state


def load_for_sampling(path, use_ema: bool = True):
    """(model, tokenizer, schedule) from a checkpoint, with the EMA weights unless told otherwise."""
    checkpoint = Checkpoint(path)
    header = checkpoint.header
    model = create_model(ModelConfig.from_dict(header["model_config"]))
    checkpoint.restore("ema" if use_ema and checkpoint.has("ema") else "model", model)
    train_config = header["train_config"]
    return model, Tokenizer.from_dict(header["tokenizer"]), make_schedule(train_config["schedule"], train_config["num_timesteps"])


def tokenize_dataset(dataset: CaptionedImages, tokenizer: Tokenizer):
    """All captions as ids once, (N, max captions per image, L), and each image's caption count."""
    counts = np.array([len(c) for c in dataset.captions])
    ids = np.zeros((len(dataset), counts.max(), tokenizer.max_length), np.int32)
    for i, options in enumerate(dataset.captions):
        ids[i, : len(options)] = tokenizer.encode_batch(options, truncate=True)
    return ids, counts


def train(state: TrainState, dataset: CaptionedImages, out_dir=None, on_report=None, progress: bool = True,
          mesh=None) -> TrainState:
    """Train until `state.config.steps`, from wherever `state` is.

    With `out_dir`, writes out_dir/checkpoint.npz every checkpoint_every steps
    and at the end. `on_report(state)` is called every sample_every steps and
    at the end (the CLI saves sample grids and the loss curve there). With a
    `mesh` (`minidiff.sharding.data_mesh()`), each batch is split over its
    devices and the parameters replicated: data-parallel training.
    """
    config = state.config
    if dataset.image_size != state.model.config.unet.image_size:
        raise ValueError(
            f"dataset images are {dataset.image_size}px but the model was built for "
            f"{state.model.config.unet.image_size}px"
        )
    put_batch = jnp.asarray
    if mesh is not None:
        from minidiff.sharding import check_batch_size, replicate, shard_batch

        check_batch_size(config.batch_size, mesh)
        for module in (state.model, state.optimizer, state.ema):
            replicate(module, mesh)
        put_batch = lambda rows: shard_batch(rows, mesh)  # noqa: E731
    schedule = make_schedule(config.schedule, config.num_timesteps)
    ids, counts = tokenize_dataset(dataset, state.tokenizer)
    empty_ids = jnp.asarray(state.tokenizer.empty(1)[0])
    base_key = jax.random.key(config.seed)
    checkpoint_path = Path(out_dir) / "checkpoint.npz" if out_dir is not None else None

    step_on_device = CompiledTrainStep(state.model, state.optimizer, state.ema, config)
    pending = []  # (step, loss on the device), read back every log_every steps, not every step
    bar = tqdm(total=config.steps, initial=state.step, disable=not progress, desc="training", unit="step")
    window_start, window_images = time.perf_counter(), 0
    try:
        while state.step < config.steps:
            step = state.step
            index = batch_indices(len(dataset), config.batch_size, config.seed, step)
            choice = caption_choices(counts[index], config.seed, step)
            images = dataset.images[index]
            if config.horizontal_flip:
                images = mirror_some(images, config.seed, step)
            loss = step_on_device(
                schedule, put_batch(images), put_batch(ids[index, choice]), empty_ids, jax.random.fold_in(base_key, step)
            )
            state.step += 1
            pending.append((state.step, loss))
            window_images += config.batch_size
            bar.update(1)

            done = state.step == config.steps
            save = checkpoint_path is not None and (done or _every(state.step, config.checkpoint_every))
            report = on_report is not None and (done or _every(state.step, config.sample_every))
            if len(pending) >= config.log_every or save or report or done:
                # Check every loss before anything is saved, so a NaN never reaches a checkpoint.
                values = [(s, float(v)) for s, v in pending]
                pending.clear()
                bad = [s for s, v in values if not np.isfinite(v)]
                if bad:
                    raise TrainingDiverged(
                        f"the loss became {values[-1][1]} at step {bad[0]}; lower the learning rate "
                        f"(now {config.learning_rate}) or the gradient clip (now {config.grad_clip})"
                    )
                state.losses.extend(values)
                elapsed = time.perf_counter() - window_start
                bar.set_postfix(loss=f"{np.mean([v for _, v in values]):.4f}", img_per_s=f"{window_images / elapsed:.0f}")
                window_start, window_images = time.perf_counter(), 0
            if save or report:
                step_on_device.sync()
            if save:
                state.save(checkpoint_path)
            if report:
                on_report(state)
    finally:  # however the loop ends (done, a NaN, Ctrl-C), the modules hold the latest arrays
        step_on_device.sync()
        bar.close()
    return state


def _every(step: int, interval: int) -> bool:
    return interval > 0 and step % interval == 0
