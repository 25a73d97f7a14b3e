"""The loss a text-to-image model trains on: one for every process.

One step (Ho et al. 2020, Algorithm 1, with a caption): pick images x0 and
their captions; blank some of the captions (caption dropout, so that the same
network also learns the unconditional model that classifier-free guidance
needs); pick a noise level t and noise eps as the process says
(`Diffusion.training_times`: a step of the forward process; a flow's: t drawn
logit-normal); form x_t = alpha_t x0 + sigma_t eps; regress the network's
output on the process's target (eps, x0 or v for diffusion; the velocity
eps - x0 for a flow) with a squared error, each image weighed as the process
says.

An upscaler is also shown each training image downsampled, at a random noise
level of its own (`minidiff.superres.training_condition`).
"""

import jax
import jax.numpy as jnp

from minidiff.corruption import per_image
from minidiff.superres import training_condition


def drop_captions(key, captions, empty_caption, probability: float):
    """Replace each caption of a batch by the empty caption with the given probability.

    A caption is a tuple of arrays: its token ids ((B, L), the empty one's (L,)); or, under a frozen text
    encoder, its cached embeddings ((B, ...) each, the empty one's (...))."""
    drop = jax.random.uniform(key, (jax.tree.leaves(captions)[0].shape[0],)) < probability  # (B,)

    def chosen(empty, given):  # empty: one caption's array, given: the batch's
        return jnp.where(drop.reshape(-1, *[1] * empty.ndim), empty[None], given)

    return jax.tree.map(chosen, empty_caption, captions)


def caption_embeddings(model, captions):
    """What the denoiser reads of the captions: the text encoder's output for their token ids (captions =
    (ids,)); under a frozen encoder, whose output never changes, the embeddings cached once for the whole
    dataset (`minidiff.text_encoders.frozen.embed_captions`), which are what the batch holds."""
    return tuple(captions) if model.config.text_encoder_frozen else model.encode_captions(*captions)


def denoising_loss(model, batch, constants, key, dtype=jnp.float32):
    """The loss on one batch: `batch` = (x0 (B, H, W, C) in the model's range, captions (`drop_captions`)),
    `constants` = (the empty caption,); the network runs on x_t in `dtype` (bfloat16 under mixed precision, with the model
    cast by the loop). Returns (loss, no metrics)."""
    x0, captions = batch
    (empty_caption,) = constants
    config = model.config
    drop_key, loss_key = jax.random.split(key)
    conditioning = caption_embeddings(model, drop_captions(drop_key, captions, empty_caption, config.caption_dropout))
    if config.upscale_from:
        loss_key, low_res_key = jax.random.split(loss_key)
        conditioning += training_condition(x0, config.upscale_from, low_res_key)
    time_key, noise_key = jax.random.split(loss_key)
    process = config.process
    t, alpha, sigma = process.training_times(time_key, x0.shape[0])  # each (B,)
    eps = jax.random.normal(noise_key, x0.shape)
    xt = per_image(alpha) * x0 + per_image(sigma) * eps
    output = model.denoise(xt.astype(dtype), t, conditioning).astype(jnp.float32)  # the loss in float32
    per_example = jnp.mean((output - process.target(x0, eps, alpha, sigma)) ** 2, axis=(1, 2, 3))  # (B,)
    return jnp.mean(process.loss_weight(alpha, sigma) * per_example), {}
