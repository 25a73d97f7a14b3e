"""A later stage — super-resolution: a diffusion model that upscales a small image it is shown.

Text-to-image systems rarely generate at full size directly. A base model
draws a small image from the caption, and one or more super-resolution
diffusion models upscale it, each conditioned on the caption and on the image
below it: a cascade (Ho et al. 2021, "Cascaded Diffusion Models"; Saharia et
al. 2022, Imagen, sec. 2.4-2.5). The base model spends its compute on
composition at a size where a step is cheap; each upscaler learns only the
detail its input lacks, a local task that a small network does well.

An upscaler is a denoiser of stage 2 (a U-Net, or a DiT) wrapped to take two
more inputs (`Upscaler`); the denoiser itself knows nothing of upscaling:
  - the low-resolution image, upsampled (bicubic) to the output size and
    concatenated to x_t as extra input channels (Ho et al. 2021, sec. 3): the
    wrapped denoiser is built with twice the image's channels in;
  - the noise level of that image (below), as sinusoids like t's, added to the
    pooled caption, which the denoiser adds to its conditioning vector.

Noise-conditioning augmentation (Ho et al. 2021, sec. 4.2; Imagen, sec. 2.4).
In training, the low-res image is a real one, downsampled; in a cascade it
comes from the base model, with that model's artefacts, which an upscaler
trained on clean inputs copies faithfully. So training corrupts the
conditioning image with the forward process of stage 1 at a random level
a in [0, 1), z = sqrt(alpha_bar(a)) low_res + sqrt(1 - alpha_bar(a)) eps, and
tells the network a. At sampling time a is fixed (a parameter of the
cascade): enough noise hides the difference between a real and a generated
low-res image, too much hides the image itself, and the upscaler then
draws from the caption alone. a = 0 passes the image unchanged.

This file makes that conditioning — downsampling with antialiasing, bicubic
upsampling (also the baseline an upscaler must beat), the augmentation, and
the pair (image, level) the upscaler takes, for training and for sampling —
and the `Upscaler` module itself.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from minidiff.corruption import cosine_alpha_bar, q_sample
from minidiff.denoiser import noise_level_embedding

# The level a cascade samples with unless told otherwise: of the levels swept (docs/cascade.md; chapter 08
# sweeps it too), the one whose cascades looked most like real images to the judge, while following their
# captions as often as at lower levels. Cleaner base models may need less.
DEFAULT_AUGMENTATION_LEVEL = 0.5
LEVEL_FEATURES = 64  # sinusoids of the low-res image's noise level


def downsample(images, size: int):
    """(B, H, W, C) -> (B, size, size, C) with an antialiasing (widened bicubic) filter, so that the small
    image averages the pixels it replaces, as a camera at that resolution would, rather than picking some."""
    return jax.image.resize(images, (images.shape[0], size, size, images.shape[-1]), "cubic", antialias=True)


def upsample(images, size: int):
    """(B, h, w, C) -> (B, size, size, C), bicubic, clipped to the image range [-1, 1] (the cubic overshoots
    at edges). What an upscaler is shown, and the baseline it must beat."""
    resized = jax.image.resize(images, (images.shape[0], size, size, images.shape[-1]), "cubic")
    return jnp.clip(resized, -1.0, 1.0)


def augment(images, level, eps):
    """The forward process at continuous level a (B,) in [0, 1] (cosine alpha_bar): a = 0 leaves the images
    as they are, a = 1 is pure noise. images and eps: (B, H, W, C)."""
    return q_sample(images, cosine_alpha_bar(level), eps)


def low_res_condition(low_res, size: int, level, key):
    """What an upscaler to `size` px is conditioned on, besides the caption: low_res (B, h, w, C) in [-1, 1]
    upsampled and noised at `level` (B,). Returns (image (B, size, size, C), level (B,))."""
    upsampled = upsample(low_res, size)
    return augment(upsampled, level, jax.random.normal(key, upsampled.shape)), level


def training_condition(x0, low_res_size: int, key):
    """The conditioning of a training batch x0 (B, H, W, C): each image downsampled to `low_res_size` and
    noised at a level drawn uniformly in [0, 1), so that the upscaler learns every level (Imagen, sec. 2.4)."""
    level_key, noise_key = jax.random.split(key)
    level = jax.random.uniform(level_key, (x0.shape[0],))
    return low_res_condition(downsample(x0, low_res_size), x0.shape[1], level, noise_key)


def check_low_res(low_res_shape, upscale_from: int, channels: int) -> None:
    """A ValueError that says what is wrong with images an upscaler from `upscale_from` px cannot take."""
    expected = (upscale_from, upscale_from, channels)
    if len(low_res_shape) != 4 or tuple(low_res_shape[1:]) != expected:
        raise ValueError(f"this upscaler takes images of shape (N, {', '.join(map(str, expected))}), "
                         f"got {tuple(low_res_shape)}")


class Upscaler(nnx.Module):
    """A denoiser that also sees a low-resolution image and that image's noise level.

    `denoiser` is any backbone of stage 2 built with in_channels = 2 C: it is shown x_t and the
    low-res image side by side. The level enters through the pooled caption, which every backbone
    adds into its conditioning vector; its projection starts at zero, so an untrained upscaler is
    its denoiser, shown the image."""

    def __init__(self, denoiser: nnx.Module, caption_dim: int, *, rngs: nnx.Rngs):
        self.denoiser = denoiser
        self.level_to_caption = nnx.Linear(LEVEL_FEATURES, caption_dim, kernel_init=nnx.initializers.zeros,
                                           rngs=rngs)

    def __call__(self, xt, t, caption_tokens, caption_mask, caption_pooled, low_res, low_res_level):
        """low_res (B, H, W, C): the low-res image upsampled to x_t's size; low_res_level (B,): its noise level
        (`low_res_condition`)."""
        level = noise_level_embedding(low_res_level, LEVEL_FEATURES).astype(xt.dtype)  # (B, LEVEL_FEATURES)
        caption_pooled = caption_pooled + self.level_to_caption(level)
        inputs = jnp.concatenate([xt, low_res.astype(xt.dtype)], axis=-1)  # (B, H, W, 2C)
        return self.denoiser(inputs, t, caption_tokens, caption_mask, caption_pooled)
