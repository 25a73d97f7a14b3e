"""Into the latent space: the autoencoder trained, and a dataset's latents encoded once and cached.

    minidiff train-autoencoder --set data.dataset=flowers data.image_size=64 --out runs/ae
    minidiff train --recipe RECIPE --set model.autoencoder=runs/ae/autoencoder.npz --out runs/latent

The autoencoder (`minidiff.autoencoder`) trains in the loop the diffusion
model trains in (`minidiff.loop`), with its own loss and batches. At every
save, the latents' scale is measured on the training images and stored with
the weights, so the file is always ready to use.

A latent diffusion model never runs the encoder while it trains: its dataset
is encoded once (`latent_dataset`), and the latents cached beside the image
cache, keyed by the autoencoder file's SHA-256 and the images' own bytes.
"""

import dataclasses
import hashlib
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from minidiff.autoencoder import (CONFIG_KEY, Autoencoder, AutoencoderConfig, autoencoder_config_of,
                                  autoencoder_loss, encode_images, file_sha256, latent_scale_of)
from minidiff.corruption import to_model_range
from minidiff.datasets.base import CaptionedImages, model_inputs
from minidiff.datasets.cache import default_cache_dir
from minidiff.loop import Run, Task, TrainConfig, batch_indices, new_run, restore_run, resumed_config, train
from minidiff.machinery.atomic import atomic_write
from minidiff.machinery.checkpoints import Checkpoint
from minidiff.machinery.initialisation import initialised

SCALE_IMAGES = 1024  # images the latent scale is measured on
KIND = "autoencoder run"


def _training_loss(model: Autoencoder, batch, constants, key, dtype):
    (images,) = batch
    loss, (l1, kl) = autoencoder_loss(model, images, key, dtype)
    return loss, {"l1": l1, "kl": kl}


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


class AutoencoderTraining(Task):
    """The autoencoder's part of a run (`minidiff.loop`): batches of images, the L1 + KL loss, and a file
    that is ready to use at every save (the latent scale measured anew each time)."""

    kind = KIND
    description = "training the autoencoder"
    loss = staticmethod(_training_loss)

    def __init__(self, model: Autoencoder, dataset: CaptionedImages, config: TrainConfig, recipe: dict | None = None):
        if dataset.image_size != model.config.image_size or dataset.latent:
            raise ValueError(f"the autoencoder takes {model.config.image_size} px images, got "
                             + ("latents" if dataset.latent else f"{dataset.image_size} px ones"))
        self.model_config, self.dataset, self.config, self.recipe = model.config, dataset, config, recipe

    def batch(self, step: int) -> tuple:
        index = batch_indices(len(self.dataset), self.config.batch_size, self.config.seed, step)
        return (model_inputs(self.dataset, index, self.config.seed, step),)

    def header(self) -> dict:
        recipe = {"recipe": self.recipe} if self.recipe is not None else {}
        return {CONFIG_KEY: dataclasses.asdict(self.model_config), **recipe}

    def before_save(self, model: Autoencoder) -> None:
        measure_latent_scale(model, self.dataset.images)


def start_autoencoder_run(model_config: AutoencoderConfig, config: TrainConfig) -> Run:
    """A new autoencoder's run. An autoencoder keeps no moving average of its weights (`ema_decay` 0)."""
    if config.ema_decay:
        raise ValueError("the autoencoder keeps no moving average of its weights: give ema_decay=0")
    return new_run(initialised(Autoencoder, model_config, config.seed), config)


def resume_autoencoder_run(path, config: TrainConfig | None = None) -> Run:
    """Reopen an autoencoder's run; `config` may change its length (steps or minutes), nothing else."""
    (model_config,) = Checkpoint(path).fields(CONFIG_KEY, kind=KIND)
    run = start_autoencoder_run(autoencoder_config_of(model_config), resumed_config(path, KIND, config))
    return restore_run(path, run, KIND)


def train_autoencoder(run: Run, dataset: CaptionedImages, checkpoint=None, progress: bool = True,
                      recipe: dict | None = None) -> Run:
    """Train until the run's steps are done or its minutes spent (`minidiff.loop.train`); with `checkpoint`, save
    there every checkpoint_every steps and at the end, each time with the latent scale measured anew (and the
    `recipe` it was made from). The model it leaves has its latent scale measured, saved or not."""
    task = AutoencoderTraining(run.model, dataset, run.config, recipe)
    run = train(run, task, checkpoint=checkpoint, progress=progress)
    if checkpoint is None:  # a saved run measured it before its last save; one kept in memory, now
        task.before_save(run.model)
    return run


def latent_dataset(dataset: CaptionedImages, autoencoder: Autoencoder, autoencoder_sha256: str, cache_dir=None,
                   progress: bool = True) -> CaptionedImages:
    """The dataset with its images replaced by their scaled latents (N, H/f, W/f, c), encoded once and
    cached (keyed by the autoencoder file's SHA-256 and the images' bytes). Not mirrored in training:
    a mirrored latent is not exactly the latent of the mirrored image."""
    if dataset.image_size != autoencoder.config.image_size:
        raise ValueError(f"the autoencoder encodes {autoencoder.config.image_size} px images, but the dataset's are "
                         f"{dataset.image_size} px: load it at data.image_size = {autoencoder.config.image_size}")
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
