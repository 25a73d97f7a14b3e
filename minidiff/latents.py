"""Into the latent space: the autoencoder trained, and a dataset's latents encoded once and cached.

    minidiff train-autoencoder --dataset flowers --image-size 64 --factor 4 --out runs/ae
    minidiff train --dataset flowers --image-size 64 --autoencoder runs/ae/autoencoder.npz --out runs/latent

The autoencoder (`minidiff.autoencoder`) trains like the diffusion model
(`minidiff.training`): AdamW at a learning rate that follows the run's
progress, a length in steps or minutes, a progress bar, checkpoints and exact
resume (a batch depends only on the seed and the step). At every save, the
latents' scale is measured on the training images and stored with the
weights, so the file is always ready to use.

A latent diffusion model never runs the encoder while it trains: its dataset
is encoded once (`latent_dataset`), and the latents cached beside the image
cache, keyed by the autoencoder file's SHA-256 and the images' own bytes.
"""

import dataclasses
import hashlib
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from minidiff.autoencoder import (CONFIG_KEY, Autoencoder, AutoencoderConfig, autoencoder_loss, encode_images,
                                  file_sha256, latent_scale_of)
from minidiff.corruption import to_model_range
from minidiff.datasets.base import CaptionedImages, batch_indices, mirror_some
from minidiff.datasets.cache import default_cache_dir
from minidiff.machinery.atomic import atomic_write
from minidiff.machinery.checkpoints import Checkpoint, CheckpointError, save_checkpoint
from minidiff.machinery.compiled_step import CompiledStep
from minidiff.machinery.initialisation import initialised
from minidiff.optimization import adamw, learning_rate_at

SCALE_IMAGES = 1024  # images the latent scale is measured on


@dataclasses.dataclass(frozen=True)
class AutoencoderTraining:
    steps: int = 2000  # the run's length, unless it has a budget in minutes
    minutes: float = 0.0  # a budget of training time (compiling not counted); 0 = none, use steps
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500  # 0 = only at the end

    def __post_init__(self):
        for name, smallest in (("steps", 1), ("batch_size", 1), ("log_every", 1), ("seed", 0),
                               ("checkpoint_every", 0)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < smallest:
                raise ValueError(f"{name} must be a whole number of at least {smallest}, got {value!r}")
        for name in ("learning_rate", "grad_clip"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)!r}")
        if not (0 <= self.minutes < math.inf and 0 <= self.weight_decay < math.inf and 0 <= self.warmup < 1):
            raise ValueError(f"minutes and weight_decay must be at least 0 and warmup in [0, 1), got {self.minutes}, "
                             f"{self.weight_decay} and {self.warmup}")


@dataclasses.dataclass
class AutoencoderRun:
    """What an autoencoder's training carries from step to step, and what its checkpoint holds."""

    model: Autoencoder
    optimizer: nnx.Optimizer
    config: AutoencoderTraining
    step: int = 0
    trained_seconds: float = 0.0
    losses: list = dataclasses.field(default_factory=list)  # (step, loss, reconstruction L1, KL per image)

    @property
    def progress(self) -> float:
        if self.config.minutes:
            return min(1.0, self.trained_seconds / (60.0 * self.config.minutes))
        return min(1.0, self.step / self.config.steps)


def new_autoencoder_run(model_config: AutoencoderConfig, config: AutoencoderTraining) -> AutoencoderRun:
    model = initialised(Autoencoder, model_config, config.seed)
    return AutoencoderRun(model, nnx.Optimizer(model, adamw(config.weight_decay, config.grad_clip), wrt=nnx.Param),
                          config)


def save_autoencoder_run(path, run: AutoencoderRun) -> Path:
    header = {CONFIG_KEY: dataclasses.asdict(run.model.config), "autoencoder_training": dataclasses.asdict(run.config),
              "step": run.step, "trained_seconds": run.trained_seconds, "losses": run.losses}
    return save_checkpoint(path, header, autoencoder=run.model, optimizer=run.optimizer)


def resume_autoencoder_run(path, config: AutoencoderTraining | None = None) -> AutoencoderRun:
    """Reopen an autoencoder's run; `config` may change its length (steps or minutes), nothing else."""
    checkpoint = Checkpoint(path)
    model_config, saved, step, seconds, losses = checkpoint.fields(
        CONFIG_KEY, "autoencoder_training", "step", "trained_seconds", "losses", kind="autoencoder training run")
    saved = AutoencoderTraining(**saved)
    if config is not None and dataclasses.replace(config, steps=saved.steps, minutes=saved.minutes) != saved:
        changed = [f.name for f in dataclasses.fields(saved) if getattr(saved, f.name) != getattr(config, f.name)]
        raise CheckpointError(f"cannot resume {path} with different settings ({', '.join(changed)}); only the run's "
                              "length (steps or minutes) may change")
    model_config = AutoencoderConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in model_config.items()})
    run = new_autoencoder_run(model_config, config or saved)
    checkpoint.restore("autoencoder", run.model)
    checkpoint.restore("optimizer", run.optimizer)
    run.step, run.trained_seconds, run.losses = int(step), float(seconds), [tuple(x) for x in losses]
    return run


def autoencoder_step(model, optimizer, images_uint8, key, learning_rate, config: AutoencoderTraining):
    """One AdamW step on `autoencoder_loss`; returns (loss, reconstruction L1, KL per image)."""
    (loss, (l1, kl)), grads = nnx.value_and_grad(autoencoder_loss, has_aux=True)(
        model, to_model_range(images_uint8), key)
    optimizer.update(model, grads, learning_rate=learning_rate)
    return jnp.stack([loss, l1, kl])


@nnx.jit
def _means(model: Autoencoder, images_uint8):
    return model.encoder(to_model_range(images_uint8))[0]


def measure_latent_scale(model: Autoencoder, images_uint8: np.ndarray) -> float:
    """Set the model's latent scale to 1 / std of its (unscaled) latents over up to SCALE_IMAGES of the
    images, a fixed choice (`latent_scale_of`); returns it."""
    chosen = np.random.default_rng(0).permutation(len(images_uint8))[:SCALE_IMAGES]
    means = np.concatenate([np.asarray(_means(model, jnp.asarray(images_uint8[np.sort(chosen[s : s + 256])])))
                            for s in range(0, len(chosen), 256)])
    scale = latent_scale_of(means)
    model.latent_scale.set_value(jnp.float32(scale))
    return scale


def train_autoencoder(run: AutoencoderRun, dataset: CaptionedImages, path=None, progress: bool = True,
                      clock=time.perf_counter) -> AutoencoderRun:
    """Train until the run's steps are done or its minutes spent; with `path`, checkpoint there every
    checkpoint_every steps and at the end (each time with the latent scale measured anew)."""
    config, model = run.config, run.model
    if dataset.image_size != model.config.image_size or dataset.latent:
        raise ValueError(f"the autoencoder takes {model.config.image_size} px images, got "
                         + ("latents" if dataset.latent else f"{dataset.image_size} px ones"))
    base_key = jax.random.key(config.seed)
    step_on_device = CompiledStep(autoencoder_step, (model, run.optimizer), config)
    bar = (tqdm(total=round(60 * config.minutes), initial=round(run.trained_seconds), desc="training the autoencoder",
                disable=not progress, bar_format="{l_bar}{bar}| {n}/{total} s{postfix}") if config.minutes else
           tqdm(total=config.steps, initial=run.step, desc="training the autoencoder", disable=not progress,
                unit="step"))
    pending, first_step, last_time = [], run.step, clock()
    try:
        while run.progress < 1.0:
            index = batch_indices(len(dataset), config.batch_size, config.seed, run.step)
            images = dataset.images[index]
            if dataset.flip_ok:
                images = mirror_some(images, config.seed, run.step)
            rate = np.float32(learning_rate_at(run.progress, config.learning_rate, config.warmup))
            losses = step_on_device(jnp.asarray(images), jax.random.fold_in(base_key, run.step), rate)
            if run.step == first_step:  # compiled: the clock starts now
                losses.block_until_ready()
                last_time = clock()
            run.step += 1
            pending.append((run.step, losses))
            now = clock()
            run.trained_seconds, last_time = run.trained_seconds + now - last_time, now
            done = run.progress >= 1.0
            save = path is not None and (done or (config.checkpoint_every and run.step % config.checkpoint_every == 0))
            if len(pending) >= config.log_every or save or done:
                values = [(step, *map(float, np.asarray(losses))) for step, losses in pending]
                pending.clear()
                if not all(np.isfinite(v[1]) for v in values):
                    raise FloatingPointError(f"the autoencoder's loss became {values[-1][1]} near step {values[-1][0]}: "
                                             f"lower the learning rate (now {config.learning_rate})")
                run.losses.extend(values)
                bar.update((round(run.trained_seconds) if config.minutes else run.step) - bar.n)
                bar.set_postfix(l1=f"{values[-1][2]:.4f}", kl=f"{values[-1][3]:.0f}", refresh=False)
            if save:
                step_on_device.sync()
                measure_latent_scale(model, dataset.images)
                save_autoencoder_run(path, run)
                last_time = clock()  # measuring and saving is not training
    finally:
        step_on_device.sync()
        bar.close()
    measure_latent_scale(model, dataset.images)  # the compiled step's arrays held the scale of its start
    return run


def latent_dataset(dataset: CaptionedImages, autoencoder: Autoencoder, autoencoder_sha256: str, cache_dir=None,
                   progress: bool = True) -> CaptionedImages:
    """The dataset with its images replaced by their scaled latents (N, H/f, W/f, c), encoded once and
    cached (keyed by the autoencoder file's SHA-256 and the images' bytes). Not mirrored in training:
    a mirrored latent is not exactly the latent of the mirrored image."""
    if dataset.image_size != autoencoder.config.image_size:
        raise ValueError(f"the autoencoder encodes {autoencoder.config.image_size} px images, but the dataset's are "
                         f"{dataset.image_size} px: load it at --image-size {autoencoder.config.image_size}")
    key = hashlib.sha256(autoencoder_sha256.encode() + hashlib.sha256(dataset.images.tobytes()).digest())
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"latents-{dataset.name}-{len(dataset)}x{dataset.image_size}px-{key.hexdigest()[:16]}.npy"
    if path.is_file():
        latents = np.load(path, allow_pickle=False)
        print(f"latents of {len(dataset)} images from the cache {path}")
    else:
        latents = encode_images(autoencoder, dataset.images, progress=progress)
        atomic_write(path, lambda f: np.save(f, latents))
        print(f"latents of {len(dataset)} images encoded and cached at {path}")
    return dataclasses.replace(dataset, images=latents, latent=True, flip_ok=False)


def autoencoder_identity(path) -> tuple[str, str]:
    """(where the file is, its SHA-256): what a latent model records of its autoencoder."""
    return str(Path(path).resolve()), file_sha256(path)
