"""Using a trained model: captions in, images out.

    import minidiff
    generator = minidiff.load("runs/demo/checkpoint.npz")
    images = generator.sample(["a red flower with a yellow centre"], sampler="dpm++2m", sampling_steps=20)

A `Generator` is the trained network with what it needs to be asked in words:
its tokenizer, and the settings it samples with unless told otherwise (its
recipe's, `sampling.SamplerSettings`). `sample` turns captions into ids, draws
the starting noise from the seed, splits the rows over this host's devices
where they split evenly, runs the sampler loop (`minidiff.sampling`) on the
model's own process (diffusion or a flow) and hands back images, in batches
with a progress bar if asked.

Later stages chain onto it: a cascade follows the generator with an upscaler
(`then`: `minidiff.load("base.npz").then(minidiff.load("sr64.npz"))`), a latent
model with its autoencoder's decoder (`decoded_by`, which `load` does itself). Each is a stage in `followed_by`, called
on the images the one before made. An upscaler's own generator samples only
with the images it upscales (`sample(captions, low_res=images)`).
"""

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from minidiff import sampling
from minidiff.autoencoder import Autoencoder, decode_latents, load_autoencoder
from minidiff.captions import Tokenizer
from minidiff.loop import Run
from minidiff.machinery.checkpoints import Checkpoint
from minidiff.machinery.initialisation import shapes_only
from minidiff.machinery.progress import progress as iterate
from minidiff.machinery.sharding import gather_on_one_device, mesh_for_batch, replicate, shard_batch
from minidiff.model import ModelConfig, TextToImage
from minidiff.sampling import SamplerSettings
from minidiff.superres import DEFAULT_AUGMENTATION_LEVEL, check_low_res, low_res_condition
from minidiff.training import KIND

# A stage after the generator: (images (N, H, W, C) in [-1, 1], their captions, seed) -> new images.
# A stage that draws noise derives its own keys from the seed, so that they differ from the generator's.
Stage = Callable[[np.ndarray, list[str], int], np.ndarray]


def check_augmentation_level(level: float) -> None:
    if not 0.0 <= level <= 1.0:  # false for NaN too
        raise ValueError(f"the augmentation level is a noise level between 0 (the low-res image as it is) and 1 "
                         f"(pure noise), got {level}")


@dataclasses.dataclass(frozen=True)
class Upscale:
    """A cascade's stage: an upscaler's generator, drawing with its own `settings` on the images the stage
    before made, seen at `augmentation_level`."""

    generator: "Generator"
    settings: SamplerSettings
    augmentation_level: float

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.generator.image_shape

    def __call__(self, images, captions, seed):
        # The base model has tokenized these captions already, and refused any too long unless told to cut them.
        return self.generator.sample(captions, low_res=images, seed=seed, truncate=True,
                                     augmentation_level=self.augmentation_level,
                                     **dataclasses.asdict(self.settings))


@dataclasses.dataclass(frozen=True)
class Decode:
    """A latent model's stage: its autoencoder's decoder, latents to images."""

    autoencoder: Autoencoder

    @property
    def image_shape(self) -> tuple[int, int, int]:
        config = self.autoencoder.config
        return (config.image_size, config.image_size, config.channels)

    def __call__(self, latents, captions, seed):
        return decode_latents(self.autoencoder, latents)


@dataclasses.dataclass
class Generator:
    model: TextToImage
    tokenizer: Tokenizer
    settings: SamplerSettings = SamplerSettings()  # how it samples unless `sample` is told otherwise
    followed_by: Sequence[Stage] = ()

    @classmethod
    def from_training(cls, run: Run, tokenizer: Tokenizer, settings: SamplerSettings = SamplerSettings(),
                      autoencoder: Autoencoder | None = None) -> "Generator":
        """The generator a run has trained so far: its EMA weights where it keeps them. A latent model's
        draws latents unless given its `autoencoder`, whose decoder then makes them images."""
        generator = cls(run.trained, tokenizer, settings)
        return generator.decoded_by(autoencoder) if autoencoder is not None else generator

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of what the network generates (the stages after it may change it)."""
        denoiser = self.config.denoiser
        return (denoiser.image_size, denoiser.image_size, denoiser.out_channels)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the images `sample` returns: that of the last stage that declares one (`image_shape`,
        as an `Upscale` stage does), else the network's own."""
        shapes = [stage.image_shape for stage in self.followed_by if hasattr(stage, "image_shape")]
        return shapes[-1] if shapes else self.image_shape

    @property
    def upscale_from(self) -> int:
        """The side of the images an upscaler takes; 0 for a base model."""
        return self.config.upscale_from

    def sampler_settings(self, **overrides) -> SamplerSettings:
        """This generator's settings with `overrides` (`SamplerSettings`' fields), checked, and x0 clipping
        chosen for what it draws: pixels live in [-1, 1] and are clipped there; latents have no such range."""
        settings = dataclasses.replace(self.settings, **overrides)
        if self.config.latent and settings.x0_clipping not in (None, "none"):
            raise ValueError(f"a latent model's x0 is a latent, with no range to clip to: x0_clipping must be none, "
                             f"got {settings.x0_clipping}")
        return dataclasses.replace(settings, x0_clipping=settings.x0_clipping or
                                   ("none" if self.config.latent else "static"))

    def decoded_by(self, autoencoder: Autoencoder) -> "Generator":
        """This latent model's generator with its autoencoder's decoder as its first stage."""
        if not self.config.latent:
            raise ValueError("this model draws pixels: it has no latents to decode")
        if autoencoder.config.latent_shape != self.image_shape:
            raise ValueError(f"this latent model draws {self.image_shape} latents, but the autoencoder decodes "
                             f"{autoencoder.config.latent_shape} ones: give the one it was trained with")
        return dataclasses.replace(self, followed_by=(Decode(autoencoder), *self.followed_by))

    def then(self, upscaler: "Generator", *, augmentation_level: float = DEFAULT_AUGMENTATION_LEVEL,
             **settings) -> "Generator":
        """This generator followed by `upscaler` (a cascade), which samples with its own settings and
        `settings`, its low-res images noised at `augmentation_level`. Everything that would not fit is an
        error now, before any sampling: an upscaler from another size than this one makes, another vocabulary."""
        if not upscaler.upscale_from:
            raise ValueError("the model to follow with is not an upscaler (its recipe has no model.upscale_from)")
        height, _, channels = self.output_shape
        if (upscaler.upscale_from, upscaler.image_shape[2]) != (height, channels):
            raise ValueError(f"the upscaler takes {upscaler.upscale_from} px images of {upscaler.image_shape[2]} "
                             f"channels, but the stage before it makes {height} px of {channels}: train it with "
                             f"model.upscale_from = {height} on such images, or put it after a stage that makes "
                             "what it takes")
        if upscaler.tokenizer.vocabulary != self.tokenizer.vocabulary:
            raise ValueError("the upscaler was trained on captions with another vocabulary than the model before "
                             "it: train both on the same dataset")
        if upscaler.tokenizer.max_length < self.tokenizer.max_length:
            raise ValueError(f"the upscaler reads captions of up to {upscaler.tokenizer.max_length} tokens, fewer "
                             f"than the {self.tokenizer.max_length} of the model before it: it would cut them")
        check_augmentation_level(augmentation_level)
        stage = Upscale(upscaler, upscaler.sampler_settings(**settings), augmentation_level)
        return dataclasses.replace(self, followed_by=(*self.followed_by, stage))

    def sample(self, captions: Sequence[str], *, seed: int = 0, truncate: bool = False, batch_size: int = 64,
               keep_trajectory: bool = False, progress: bool = False, low_res=None,
               augmentation_level: float = DEFAULT_AUGMENTATION_LEVEL, **settings):
        """One image per caption: (N, H, W, C) float32 in [-1, 1] (`corruption.to_uint8` makes pixels).

        `settings` override the generator's own (`sampler_settings`; the fields of
        `sampling.SamplerSettings`: sampler, sampling_steps, guidance, eta, x0_clipping, spacing).
        Batch k (of `batch_size` captions) starts from the noise of seed + k * batch_size,
        so an image depends on its seed and its place, not on how many others are drawn
        after it. A caption too long for the model is an error unless `truncate`. With
        keep_trajectory, also returns the network's `sampling.Trajectory` (before any later stage).
        An upscaler takes `low_res`, one image (N, h, w, C) in [-1, 1] per caption, which it sees
        noised at `augmentation_level` (`minidiff.superres`).
        """
        settings = self.sampler_settings(**settings)
        captions = list(captions)
        if not captions:
            raise ValueError("no captions to draw: give at least one")
        if self.upscale_from:
            if low_res is None:
                raise ValueError("this model is an upscaler: give it the images to upscale (low_res), or follow a "
                                 "base model with it (base.then(upscaler))")
            check_low_res(np.shape(low_res), self.upscale_from, self.image_shape[2])
            if not np.issubdtype(np.asarray(low_res).dtype, np.floating):
                raise ValueError(f"low_res must be floats in [-1, 1], got {np.asarray(low_res).dtype}: convert pixels "
                                 "with minidiff.corruption.to_model_range")
            if len(low_res) != len(captions):
                raise ValueError(f"{len(captions)} captions but {len(low_res)} images to upscale: give one per caption")
            check_augmentation_level(augmentation_level)
        elif low_res is not None:
            raise ValueError("low_res is for an upscaler; this model draws from captions alone")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        ids = self.tokenizer.encode_batch(captions, truncate=truncate)  # a clear error for an empty caption
        images, trajectories = [], []
        starts = range(0, len(ids), batch_size)
        for start in iterate(starts, f"sampling ({settings.sampler}, {settings.sampling_steps} steps)",
                             enabled=progress):
            rows = slice(start, start + batch_size)
            result = self._sample_batch(ids[rows], seed + start, None if low_res is None else low_res[rows],
                                        augmentation_level, settings, keep_trajectory)
            batch, trajectory = result if keep_trajectory else (result, None)
            images.append(np.asarray(batch))
            trajectories.append(jax.device_get(trajectory))
        images = np.concatenate(images)
        for stage in self.followed_by:
            images = stage(images, captions, seed)
        if not keep_trajectory:
            return images
        return images, jax.tree.map(lambda *parts: np.concatenate(parts, axis=1), *trajectories)

    def _sample_batch(self, caption_ids: np.ndarray, seed: int, low_res, augmentation_level: float,
                      settings: SamplerSettings, keep_trajectory: bool):
        """One batch through the sampler, its rows split over as many of this host's devices as divide it."""
        key = jax.random.key(seed)
        if low_res is not None:  # an upscaler's keys differ from those of the base model it follows
            key = jax.random.fold_in(key, self.image_shape[0])
            key, augmentation_key = jax.random.split(key)
        noise_key, loop_key = jax.random.split(key)
        noise = jax.random.normal(noise_key, (len(caption_ids), *self.image_shape))
        empty_ids = self.tokenizer.empty(len(caption_ids))
        rows = [caption_ids, empty_ids, noise]
        if low_res is not None:
            levels = jnp.full((len(caption_ids),), augmentation_level, jnp.float32)
            rows += low_res_condition(jnp.asarray(low_res, jnp.float32), self.image_shape[0], levels, augmentation_key)
        mesh = mesh_for_batch(len(caption_ids))
        if mesh is not None:
            replicate(self.model, mesh)
            rows = [shard_batch(np.asarray(row), mesh) for row in rows]
        else:
            # A jitted call runs where its inputs live: a model left replicated by an earlier
            # batch would compute this one on every device.
            gather_on_one_device(self.model)
            rows = [jnp.asarray(row) for row in rows]
        caption_ids, empty_ids, noise, *conditioning = rows
        return sampling.sample(self.model, self.config.process, noise, caption_ids, empty_ids, loop_key,
                               keep_trajectory=keep_trajectory, conditioning=tuple(conditioning),
                               **dataclasses.asdict(settings))


def autoencoder_of(config: ModelConfig, path=None) -> Autoencoder:
    """A latent model's autoencoder: the file at `path`, else where it was when the model trained; refused
    unless it is that very file (its SHA-256)."""
    path = path or config.autoencoder_file
    if not Path(path).is_file():
        raise FileNotFoundError(f"this latent model needs the autoencoder it was trained with (SHA-256 "
                                f"{config.autoencoder_sha256[:12]}...), which was at {config.autoencoder_file}; there is "
                                f"no file at {path}: give its path (--autoencoder)")
    return load_autoencoder(path, sha256=config.autoencoder_sha256)


def load(path, use_ema: bool = True, autoencoder=None) -> Generator:
    """The generator saved in a training run's checkpoint, with the EMA weights unless told otherwise, and
    the sampling settings of the recipe it was trained from. A latent model decodes with its autoencoder,
    from the file `autoencoder` or the one it recorded."""
    checkpoint = Checkpoint(path)
    model_config, tokenizer = checkpoint.fields("model_config", "tokenizer", kind=KIND)
    config = ModelConfig.from_dict(model_config)
    if autoencoder is not None and not config.latent:
        raise ValueError(f"{path} is a pixel model: it needs no autoencoder")
    model = shapes_only(TextToImage, config)
    checkpoint.restore("ema" if use_ema and checkpoint.has("ema") else "model", model)
    settings = SamplerSettings(**checkpoint.header.get("recipe", {}).get("sample", {}))
    generator = Generator(model, Tokenizer.from_dict(tokenizer), settings)
    return generator.decoded_by(autoencoder_of(config, autoencoder)) if config.latent else generator
