"""Latent diffusion's autoencoder: images to a small latent and back (Rombach et al. 2022, sec. 3).

    image x (B, H, W, 3) --Encoder--> mean, log-variance (B, H/f, W/f, c) --sample--> z --Decoder--> x_rec

A pixel diffusion model pays for every pixel at every step of training and
sampling, although most of an image's bits are detail the eye hardly checks.
Rombach et al. first train an autoencoder that compresses an image f times on
each side into c channels (f = 4 or 8, c = 4: 12 or 48 times fewer numbers than
RGB), then train the diffusion model on those latents, and decode its samples
at the end. The denoiser is unchanged: it sees (B, H/f, W/f, c) arrays instead
of (B, H, W, 3) images.

The encoder outputs a diagonal Gaussian, not a point: q(z | x) = N(mean,
exp(log_variance)), sampled with the reparametrisation z = mean + std * eps
(Kingma & Welling 2014) so gradients reach mean and std. A KL term pulls q
towards N(0, I), weighted by only ~1e-6 (Rombach et al., appendix G): it keeps
the latent's scale from drifting without forcing the blur of a real VAE. The
latent's scale is then measured on the data and divided out, so the diffusion
model sees unit-variance inputs as it would see pixels in [-1, 1]; Stable
Diffusion's 0.18215 is that factor for its own autoencoder.

Reading order: the config, a residual block, the encoder, the decoder, the Gaussian's
sampling and KL, the whole autoencoder and its loss, then saving and loading.
"""

import dataclasses
import hashlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from minidiff.corruption import to_model_range
from minidiff.denoiser import depth_to_space, space_to_depth
from minidiff.machinery.checkpoints import Checkpoint, CheckpointError
from minidiff.machinery.initialisation import shapes_only
from minidiff.machinery.progress import progress as iterate

FACTORS = (4, 8)


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    image_size: int = 64
    latent_channels: int = 4  # c
    # Each p x p patch of pixels is folded into channels first (the U-Net's patch stem, chapter 02), so no
    # layer runs at the full resolution, where a convolution costs the most; then one level per width, the
    # side halving between them. f = p * 2^(levels - 1).
    patch_size: int = 2
    widths: tuple[int, ...] = (32, 64)
    groups: int = 8
    kl_weight: float = 1e-6  # the weight of the KL term (Rombach et al., appendix G: 1e-6)
    channels: int = 3

    def __post_init__(self):
        if not self.widths or any(w % self.groups for w in self.widths) or self.patch_size < 1:
            raise ValueError(f"an autoencoder needs at least one width, each divisible by groups={self.groups}, and "
                             f"a patch size of at least 1, got widths {self.widths} and patch size {self.patch_size}")
        if self.image_size % self.factor:
            raise ValueError(f"an autoencoder that shrinks images {self.factor} times on a side needs an image size "
                             f"divisible by {self.factor}, got {self.image_size}")
        if self.latent_channels < 1 or not 0 <= self.kl_weight < float("inf"):
            raise ValueError(f"latent_channels must be at least 1 and kl_weight at least 0, got "
                             f"{self.latent_channels} and {self.kl_weight}")

    @property
    def factor(self) -> int:
        """f: how many times smaller the latent is than the image, on each side."""
        return self.patch_size * 2 ** (len(self.widths) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.image_size // self.factor
        return (side, side, self.latent_channels)


def autoencoder_preset(factor: int, image_size: int = 64, **overrides) -> AutoencoderConfig:
    """The autoencoder that shrinks images `factor` (4 or 8) times on a side: one more level for 8."""
    if factor not in FACTORS:
        raise ValueError(f"the autoencoder's factor is one of {FACTORS}, got {factor}")
    widths = (32, 64) if factor == 4 else (32, 64, 128)
    config = AutoencoderConfig(image_size=image_size, **({"widths": widths} | overrides))
    if config.factor != factor:
        raise ValueError(f"these widths and patch size make an autoencoder that shrinks images {config.factor} "
                         f"times on a side, not {factor}: give one more width per doubling of the factor")
    return config


class ResidualBlock(nnx.Module):
    """GroupNorm -> SiLU -> 3x3 conv, twice, plus a skip: the denoiser's block without its conditioning
    (an autoencoder knows no noise level or caption)."""

    def __init__(self, width: int, groups: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.GroupNorm(width, num_groups=groups, rngs=rngs)
        self.conv1 = nnx.Conv(width, width, (3, 3), rngs=rngs)
        self.norm2 = nnx.GroupNorm(width, num_groups=groups, rngs=rngs)
        self.conv2 = nnx.Conv(width, width, (3, 3), rngs=rngs)

    def __call__(self, x):  # (B, H, W, width) -> the same
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        return x + self.conv2(jax.nn.silu(self.norm2(h)))


class Encoder(nnx.Module):
    """image (B, H, W, 3) -> mean and log-variance of q(z | x), each (B, H/f, W/f, c)."""

    def __init__(self, config: AutoencoderConfig, *, rngs: nnx.Rngs):
        widths, groups, p = config.widths, config.groups, config.patch_size
        self.patch_size = p
        self.stem = nnx.Conv(p * p * config.channels, widths[0], (3, 3), rngs=rngs)
        self.blocks = nnx.List([ResidualBlock(w, groups, rngs=rngs) for w in widths])
        # A stride-2 convolution between levels halves the side and widens to the next level's width.
        self.downs = nnx.List([nnx.Conv(a, b, (3, 3), strides=2, rngs=rngs) for a, b in zip(widths, widths[1:])])
        self.middle = ResidualBlock(widths[-1], groups, rngs=rngs)
        self.norm = nnx.GroupNorm(widths[-1], num_groups=groups, rngs=rngs)
        self.out = nnx.Conv(widths[-1], 2 * config.latent_channels, (3, 3), rngs=rngs)

    def __call__(self, images):
        h = self.stem(space_to_depth(images, self.patch_size))  # (B, H/p, W/p, widths[0])
        for i, block in enumerate(self.blocks):
            h = block(h)  # (B, H / (p 2^i), W / (p 2^i), widths[i])
            if i < len(self.downs):
                h = self.downs[i](h)
        h = self.out(jax.nn.silu(self.norm(self.middle(h))))  # (B, H/f, W/f, 2c)
        mean, log_variance = jnp.split(h, 2, axis=-1)
        # Bounded as in Rombach et al.'s code: exp() of an untrained network's output must not overflow.
        return mean, jnp.clip(log_variance, -30.0, 20.0)


class Decoder(nnx.Module):
    """z (B, H/f, W/f, c) -> image (B, H, W, 3), unbounded (clip to [-1, 1] to show it). The encoder mirrored."""

    def __init__(self, config: AutoencoderConfig, *, rngs: nnx.Rngs):
        widths, groups, p = config.widths[::-1], config.groups, config.patch_size  # widest first
        self.patch_size = p
        self.stem = nnx.Conv(config.latent_channels, widths[0], (3, 3), rngs=rngs)
        self.middle = ResidualBlock(widths[0], groups, rngs=rngs)
        self.blocks = nnx.List([ResidualBlock(w, groups, rngs=rngs) for w in widths])
        # Between levels: repeat each value 2 x 2, then a 3x3 conv to the next width (no transposed
        # convolution, whose uneven overlaps print a checkerboard; Odena et al. 2016).
        self.ups = nnx.List([nnx.Conv(a, b, (3, 3), rngs=rngs) for a, b in zip(widths, widths[1:])])
        self.norm = nnx.GroupNorm(widths[-1], num_groups=groups, rngs=rngs)
        self.out = nnx.Conv(widths[-1], p * p * config.channels, (3, 3), rngs=rngs)

    def __call__(self, z):
        h = self.middle(self.stem(z))  # (B, H/f, W/f, widths[-1])
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i < len(self.ups):
                h = self.ups[i](jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2))  # the side doubles
        # Each position's p * p * 3 outputs unfold into its p x p patch of pixels: (B, H, W, 3).
        return depth_to_space(self.out(jax.nn.silu(self.norm(h))), self.patch_size)


def sample_posterior(mean, log_variance, key):
    """z ~ N(mean, exp(log_variance)) as mean + std * eps: the reparametrisation (Kingma & Welling 2014,
    sec. 2.4), through which the loss's gradient reaches the encoder."""
    return mean + jnp.exp(0.5 * log_variance) * jax.random.normal(key, mean.shape)


def kl_to_standard_normal(mean, log_variance):
    """KL(N(mean, var) || N(0, I)) per example, summed over the latent: (B,).
    For one dimension the closed form is (mean^2 + var - 1 - log var) / 2 (Kingma & Welling 2014, app. B)."""
    return 0.5 * jnp.sum(mean**2 + jnp.exp(log_variance) - 1.0 - log_variance, axis=(1, 2, 3))


def latent_scale_of(latents) -> float:
    """1 / std of latents over every value: the factor that gives the diffusion model unit-variance inputs
    (Rombach et al. 2022, sec. 4.3.2; Stable Diffusion's 0.18215 is this for its autoencoder)."""
    return float(1.0 / max(float(np.std(np.asarray(latents, np.float64))), 1e-8))


class LatentScale(nnx.Variable):
    """1 / std of the encoder's latents over a dataset, measured after training: not a parameter."""


class Autoencoder(nnx.Module):
    def __init__(self, config: AutoencoderConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = Encoder(config, rngs=rngs)
        self.decoder = Decoder(config, rngs=rngs)
        self.latent_scale = LatentScale(jnp.ones((), jnp.float32))

    def __call__(self, images, key):
        """images (B, H, W, 3) in [-1, 1] -> (reconstruction (B, H, W, 3), mean, log_variance)."""
        mean, log_variance = self.encoder(images)
        return self.decoder(sample_posterior(mean, log_variance, key)), mean, log_variance

    def to_latents(self, images):
        """What the diffusion model is trained on: the posterior's mean, times the latent scale.
        (B, H, W, 3) in [-1, 1] -> (B, H/f, W/f, c), about unit variance. The mean rather than a
        sample: with the tiny KL weight the posterior's std is small, and a cached dataset stays fixed."""
        mean, _ = self.encoder(images)
        return mean * self.latent_scale[...]

    def from_latents(self, latents):
        """The inverse of `to_latents`: (B, H/f, W/f, c) -> images (B, H, W, 3) in [-1, 1]."""
        return jnp.clip(self.decoder(latents / self.latent_scale[...]), -1.0, 1.0)


def autoencoder_loss(model: Autoencoder, images, key, dtype=jnp.float32):
    """Mean absolute error of the reconstruction plus kl_weight times the KL term, both per pixel value
    (so kl_weight means what it means in Rombach et al.'s code, where both are sums per image).
    L1 rather than L2: a squared error forgives small errors everywhere and blurs (Isola et al. 2017,
    sec. 3.1). Rombach et al. add a perceptual and an adversarial term; neither is here (a perceptual
    loss needs a pretrained network). The network runs in `dtype` (bfloat16 under mixed precision), the
    loss in float32. Returns (loss, (reconstruction L1, KL per image))."""
    reconstruction, mean, log_variance = (out.astype(jnp.float32) for out in model(images.astype(dtype), key))
    l1 = jnp.mean(jnp.abs(reconstruction - images))
    kl = jnp.mean(kl_to_standard_normal(mean, log_variance))
    return l1 + model.config.kl_weight * kl / images[0].size, (l1, kl)


@nnx.jit
def _to_latents(model: Autoencoder, images_uint8):
    return model.to_latents(to_model_range(images_uint8))


@nnx.jit
def _from_latents(model: Autoencoder, latents):
    return model.from_latents(latents)


def encode_images(model: Autoencoder, images_uint8, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """Scaled latents (`Autoencoder.to_latents`) of uint8 images (N, H, W, 3): (N, H/f, W/f, c) float32."""
    starts = range(0, len(images_uint8), batch_size)
    return np.concatenate([np.asarray(_to_latents(model, jnp.asarray(images_uint8[s : s + batch_size])))
                           for s in iterate(starts, "encoding latents", enabled=progress)])


def decode_latents(model: Autoencoder, latents, batch_size: int = 256) -> np.ndarray:
    """Images (N, H, W, 3) in [-1, 1] of scaled latents (N, H/f, W/f, c) (`Autoencoder.from_latents`)."""
    latents = np.asarray(latents, np.float32)
    if latents.shape[1:] != model.config.latent_shape:
        raise ValueError(f"the autoencoder decodes latents of shape {model.config.latent_shape}, got "
                         f"{latents.shape[1:]}")
    return np.concatenate([np.asarray(_from_latents(model, jnp.asarray(latents[s : s + batch_size])))
                           for s in range(0, len(latents), batch_size)])


# --- Saving and finding an autoencoder ----------------------------------------------------

CONFIG_KEY = "autoencoder_config"


def file_sha256(path) -> str:
    """The SHA-256 of a file's bytes: what a latent model records of the autoencoder it needs."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def autoencoder_config_of(saved: dict) -> AutoencoderConfig:
    """The config a file's header holds (JSON has lists where the config has tuples)."""
    return AutoencoderConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})


def load_autoencoder(path, sha256: str | None = None) -> Autoencoder:
    """The autoencoder saved at `path` (`minidiff.latents.train_autoencoder`'s checkpoint); with `sha256`,
    refused unless the file is that one."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no autoencoder at {path}: train one with `minidiff train-autoencoder --out DIR` "
                                "and give DIR/autoencoder.npz")
    if sha256 is not None and file_sha256(path) != sha256:
        raise CheckpointError(f"{path} is not the autoencoder this model was trained with (SHA-256 {sha256[:12]}..., "
                              f"this file's is {file_sha256(path)[:12]}...): a latent model decodes only with its "
                              "own autoencoder; give that file")
    checkpoint = Checkpoint(path)
    (config,) = checkpoint.fields(CONFIG_KEY, kind="minidiff autoencoder")
    model = shapes_only(Autoencoder, autoencoder_config_of(config))
    checkpoint.restore("model", model)
    return model
