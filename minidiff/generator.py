"""Using a trained model: captions in, images out.

    import minidiff
    generator = minidiff.load("runs/demo/checkpoint.npz")
    images = generator.sample(["a red flower with a yellow centre"], sampler="dpm++2m", steps=20, guidance=3)

A `Generator` is the trained network with what it needs to be asked in words:
its tokenizer and the noise schedule it was trained on. `sample` turns
captions into ids, draws the starting noise from the seed, splits the rows over
this host's devices where they split evenly, runs a sampler (`minidiff.sampling`, or `minidiff.flows` for a flow model)
and hands back images, in batches with a progress bar if asked.

Later stages chain onto it: a cascade follows the generator with an upscaler
(`then`: `minidiff.load("base.npz").then(minidiff.load("sr64.npz"))`), a latent
model with its autoencoder's decoder (`decoded_by`, which `load` does itself). Each is a stage in `followed_by`, called
on the images the one before made. An upscaler's own generator samples only
with the images it upscales (`sample(captions, low_res=images)`).
"""

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from minidiff import flows, sampling
from minidiff.autoencoder import Autoencoder, decode_latents, load_autoencoder
from minidiff.captions import Tokenizer
from minidiff.corruption import NoiseSchedule
from minidiff.machinery.checkpoints import Checkpoint
from minidiff.machinery.initialisation import shapes_only
from minidiff.machinery.sharding import gather_on_one_device, mesh_for_batch, replicate, shard_batch
from minidiff.model import ModelConfig, TextToImage
from minidiff.superres import DEFAULT_AUGMENTATION_LEVEL, check_low_res, low_res_condition
from minidiff.training import TrainConfig, TrainState

# What `Generator.sample` draws with (its other parameters say how the work is split and shown).
SAMPLING_SETTINGS = ("sampler", "steps", "guidance", "eta", "x0_clipping", "seed")
# Each objective's samplers; the first is the one used when none is named.
SAMPLERS_OF = {"diffusion": ("ddim", *(s for s in sampling.SAMPLERS if s != "ddim")), "flow": flows.FLOW_SAMPLERS}
ALL_SAMPLERS = tuple(dict.fromkeys(s for samplers in SAMPLERS_OF.values() for s in samplers))


def checked_sampler(objective: str, sampler: str | None, steps: int, guidance: float, eta: float,
                    x0_clipping: str | None) -> str:
    """A ValueError that says what is wrong with settings a model of this objective cannot sample with;
    else the sampler to use (its objective's first when `sampler` is None). x0_clipping None: the model's
    own (`Generator.default_x0_clipping`)."""
    sampler = sampler or SAMPLERS_OF[objective][0]
    x0_clipping = x0_clipping or "none"
    if sampler not in SAMPLERS_OF[objective]:
        raise ValueError(f"a {objective} model samples with one of {SAMPLERS_OF[objective]}, not {sampler!r}")
    if objective == "flow":
        if eta != 0.0:
            raise ValueError(f"eta is DDIM's noise; a flow's samplers are deterministic, so it must be 0, got {eta}")
        flows.check_settings(sampler, steps, guidance, x0_clipping)
    else:
        sampling.check_settings(sampler, steps, guidance, eta, x0_clipping)
    return sampler


# A stage after the generator: (images (N, H, W, C) in [-1, 1], their captions, seed) -> new images.
# A stage that draws noise derives its own keys from the seed, so that they differ from the generator's.
Stage = Callable[[np.ndarray, list[str], int], np.ndarray]


def check_augmentation_level(level: float) -> None:
    if not 0.0 <= level <= 1.0:  # false for NaN too
        raise ValueError(f"the augmentation level is a noise level between 0 (the low-res image as it is) and 1 "
                         f"(pure noise), got {level}")


@dataclasses.dataclass(frozen=True)
class Upscale:
    """A cascade's stage: an upscaler's generator, drawing with its own `settings` (`Generator.sample`'s,
    augmentation_level included) on the images the stage before made."""

    generator: "Generator"
    settings: dict

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.generator.image_shape

    def __call__(self, images, captions, seed):
        # The base model has tokenized these captions already, and refused any too long unless told to cut them.
        return self.generator.sample(captions, low_res=images, seed=seed, truncate=True, **self.settings)


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
    schedule: NoiseSchedule
    followed_by: Sequence[Stage] = ()

    @classmethod
    def from_training(cls, state: TrainState, autoencoder: Autoencoder | None = None) -> "Generator":
        """The generator a run has trained so far: its EMA weights. A latent model's draws latents unless
        given its `autoencoder`, whose decoder then makes them images."""
        generator = cls(state.ema, state.tokenizer, state.config.noise_schedule())
        return generator.decoded_by(autoencoder) if autoencoder is not None else generator

    @staticmethod
    def settings(objective: str = "diffusion", **given) -> dict:
        """`sample`'s SAMPLING_SETTINGS for a model of this objective: those given and the defaults of
        the others, checked (`checked_sampler`), so that bad ones stop a caller before it does anything slow."""
        unknown = set(given) - set(SAMPLING_SETTINGS)
        if unknown:
            raise TypeError(f"{', '.join(sorted(unknown))}: not among the sampling settings {SAMPLING_SETTINGS}")
        parameters = inspect.signature(Generator.sample).parameters
        settings = {name: parameters[name].default for name in SAMPLING_SETTINGS} | given
        settings["sampler"] = checked_sampler(objective, settings["sampler"], settings["steps"], settings["guidance"],
                                             settings["eta"], settings["x0_clipping"])
        return settings

    @property
    def objective(self) -> str:
        return self.model.config.objective

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of what the network generates (the stages after it may change it)."""
        denoiser = self.model.config.denoiser
        return (denoiser.image_size, denoiser.image_size, denoiser.channels)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the images `sample` returns: that of the last stage that declares one (`image_shape`,
        as an `Upscale` stage does), else the network's own."""
        shapes = [stage.image_shape for stage in self.followed_by if hasattr(stage, "image_shape")]
        return shapes[-1] if shapes else self.image_shape

    @property
    def latent(self) -> bool:
        """Whether the network draws an autoencoder's latents, which the `Decode` stage turns into images."""
        return self.model.config.latent

    @property
    def default_x0_clipping(self) -> str:
        """Pixels live in [-1, 1], so x0 predictions are clipped there; latents have no such range."""
        return "none" if self.latent else "static"

    def decoded_by(self, autoencoder: Autoencoder) -> "Generator":
        """This latent model's generator with its autoencoder's decoder as its first stage."""
        if not self.latent:
            raise ValueError("this model draws pixels: it has no latents to decode")
        if autoencoder.config.latent_shape != self.image_shape:
            raise ValueError(f"this latent model draws {self.image_shape} latents, but the autoencoder decodes "
                             f"{autoencoder.config.latent_shape} ones: give the one it was trained with")
        return dataclasses.replace(self, followed_by=(Decode(autoencoder), *self.followed_by))

    @property
    def upscale_from(self) -> int:
        """The side of the images an upscaler takes; 0 for a base model."""
        return self.model.config.upscale_from

    def then(self, upscaler: "Generator", *, augmentation_level: float = DEFAULT_AUGMENTATION_LEVEL,
             **settings) -> "Generator":
        """This generator followed by `upscaler` (a cascade), which samples with `settings` (`sample`'s) and
        its low-res images noised at `augmentation_level`. Everything that would not fit is an error now,
        before any sampling: an upscaler from another size than this one makes, another vocabulary."""
        if not upscaler.upscale_from:
            raise ValueError("the model to follow with is not an upscaler (it was trained without --upscale-from)")
        height, _, channels = self.output_shape
        if (upscaler.upscale_from, upscaler.image_shape[2]) != (height, channels):
            raise ValueError(f"the upscaler takes {upscaler.upscale_from} px images of {upscaler.image_shape[2]} "
                             f"channels, but the stage before it makes {height} px of {channels}: train it with "
                             f"--upscale-from {height} on such images, or put it after a stage that makes what it takes")
        if upscaler.tokenizer.vocabulary != self.tokenizer.vocabulary:
            raise ValueError("the upscaler was trained on captions with another vocabulary than the model before "
                             "it: train both on the same dataset")
        if upscaler.tokenizer.max_length < self.tokenizer.max_length:
            raise ValueError(f"the upscaler reads captions of up to {upscaler.tokenizer.max_length} tokens, fewer "
                             f"than the {self.tokenizer.max_length} of the model before it: it would cut them")
        check_augmentation_level(augmentation_level)
        if "seed" in settings:
            raise TypeError("a cascade's stages draw with the seed its `sample` is given; give no seed here")
        settings = Generator.settings(upscaler.objective, **settings)
        del settings["seed"]
        stage = Upscale(upscaler, settings | {"augmentation_level": augmentation_level})
        return dataclasses.replace(self, followed_by=(*self.followed_by, stage))

    def sample(self, captions: Sequence[str], *, sampler: str | None = None, steps: int = 50, guidance: float = 3.0,
               eta: float = 0.0, seed: int = 0, x0_clipping: str | None = None, truncate: bool = False,
               batch_size: int = 64, keep_trajectory: bool = False, progress: bool = False, low_res=None,
               augmentation_level: float = DEFAULT_AUGMENTATION_LEVEL):
        """One image per caption: (N, H, W, C) float32 in [-1, 1] (`corruption.to_uint8` makes pixels).

        Batch k (of `batch_size` captions) starts from the noise of seed + k * batch_size,
        so an image depends on its seed and its place, not on how many others are drawn
        after it. A caption too long for the model is an error unless `truncate`. With
        keep_trajectory, also returns the x0 prediction at every step, (steps, N, H, W, C).
        `sampler` is one of the model's objective's (`SAMPLERS_OF`; None: DDIM for diffusion,
        Euler for a flow); the other settings are `minidiff.sampling.sample`'s. An upscaler
        takes `low_res`, one image (N, h, w, C) in [-1, 1] per caption, which it sees noised at
        `augmentation_level` (`minidiff.superres`). x0_clipping None: static for pixels, none for a
        latent model, whose images are decoded from what the sampler draws.
        """
        if self.latent and x0_clipping not in (None, "none"):
            raise ValueError(f"a latent model's x0 is a latent, with no range to clip to: x0_clipping must be none, "
                             f"got {x0_clipping}")
        x0_clipping = x0_clipping or self.default_x0_clipping
        sampler = checked_sampler(self.objective, sampler, steps, guidance, eta, x0_clipping)
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
        for start in tqdm(starts, desc=f"sampling ({sampler}, {steps} steps)", disable=not progress, unit="batch"):
            rows = slice(start, start + batch_size)
            result = self._sample_batch(ids[rows], seed + start, None if low_res is None else low_res[rows],
                                        augmentation_level, sampler=sampler, num_steps=steps, guidance_scale=guidance,
                                        eta=eta, x0_clipping=x0_clipping, keep_trajectory=keep_trajectory)
            batch, trajectory = result if keep_trajectory else (result, None)
            images.append(np.asarray(batch))
            trajectories.append(np.asarray(trajectory) if keep_trajectory else None)
        images = np.concatenate(images)
        for stage in self.followed_by:
            images = stage(images, captions, seed)
        return (images, np.concatenate(trajectories, axis=1)) if keep_trajectory else images

    def _sample_batch(self, token_ids: np.ndarray, seed: int, low_res, augmentation_level: float, **settings):
        """One batch through the sampler, its rows split over as many of this host's devices as divide it."""
        key = jax.random.key(seed)
        if low_res is not None:  # an upscaler's keys differ from those of the base model it follows
            key = jax.random.fold_in(key, self.image_shape[0])
            key, augmentation_key = jax.random.split(key)
        noise_key, loop_key = jax.random.split(key)
        noise = jax.random.normal(noise_key, (len(token_ids), *self.image_shape))
        empty_ids = self.tokenizer.empty(len(token_ids))
        rows = [token_ids, empty_ids, noise]
        if low_res is not None:
            levels = jnp.full((len(token_ids),), augmentation_level, jnp.float32)
            rows += low_res_condition(jnp.asarray(low_res, jnp.float32), self.image_shape[0], levels, augmentation_key)
        mesh = mesh_for_batch(len(token_ids))
        if mesh is not None:
            replicate(self.model, mesh)
            rows = [shard_batch(np.asarray(row), mesh) for row in rows]
        else:
            # A jitted call runs where its inputs live: a model left replicated by an earlier
            # batch would compute this one on every device.
            gather_on_one_device(self.model)
            rows = [jnp.asarray(row) for row in rows]
        token_ids, empty_ids, noise, *low_res_rows = rows
        settings["low_res_condition"] = tuple(low_res_rows)
        if self.objective == "flow":
            del settings["eta"]  # checked to be 0: an ODE solver adds no noise
            return flows.sample(self.model, noise, token_ids, empty_ids, loop_key, **settings)
        return sampling.sample(self.model, self.schedule, noise, token_ids, empty_ids, loop_key, **settings)


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
    """The generator saved in a training run's checkpoint, with the EMA weights unless told otherwise.
    A latent model decodes with its autoencoder, from the file `autoencoder` or the one it recorded."""
    checkpoint = Checkpoint(path)
    model_config, tokenizer, train_config = checkpoint.fields("model_config", "tokenizer", "train_config",
                                                              kind="generator")
    config = ModelConfig.from_dict(model_config)
    if autoencoder is not None and not config.latent:
        raise ValueError(f"{path} is a pixel model: it needs no autoencoder")
    model = shapes_only(TextToImage, config)
    checkpoint.restore("ema" if use_ema and checkpoint.has("ema") else "model", model)
    generator = Generator(model, Tokenizer.from_dict(tokenizer), TrainConfig.from_dict(train_config).noise_schedule())
    return generator.decoded_by(autoencoder_of(config, autoencoder)) if config.latent else generator
