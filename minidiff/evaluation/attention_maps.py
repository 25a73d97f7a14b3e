"""Which words each part of an image looks at: cross-attention maps.

In every cross-attention layer, each image position (a pixel of a U-Net level,
or a DiT patch) spreads one unit of attention over the caption's tokens
(`minidiff.attention.attention_weights`). Kept for one token and laid out on
the image's grid, those weights are a map of where that word is read: "wings"
lights up the wings, if the model has learned what the word means (the maps
Hertz et al. 2022 edit to edit images).

The maps are read off one denoising call: the image, noised to level t, with
its caption. Averaged over heads and over the layers of each grid size.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from minidiff.attention import MultiHeadAttention
from minidiff.corruption import to_model_range


def cross_attention_layers(model) -> list[MultiHeadAttention]:
    return [module for path, module in nnx.iter_modules(model.denoiser)
            if path and path[-1] == "cross_attention" and isinstance(module, MultiHeadAttention)]


def cross_attention_maps(model, images_uint8, token_ids, t: float = 0.5, seed: int = 0) -> dict[int, np.ndarray]:
    """For images (B, H, W, C) uint8 and their captions' ids (B, L): {grid side S: maps (B, S, S, L)}, how
    much the positions of each S x S grid attend to each token, noised by the model's process to noise level
    t (0 clean, 1 pure noise)."""
    layers = cross_attention_layers(model)
    if not layers:
        raise ValueError("this denoiser has no cross-attention layers to read maps from")
    x0 = to_model_range(jnp.asarray(images_uint8))
    eps = jax.random.normal(jax.random.key(seed), x0.shape)
    alpha, sigma = (float(level) for level in model.config.process.alpha_sigma(t))
    xt = alpha * x0 + sigma * eps
    for layer in layers:
        layer.keep_weights = True
    try:
        forward = nnx.capture(lambda model, xt, t, ids: model.denoise(xt, t, model.encode_captions(ids)),
                              nnx.Intermediate)
        _, kept = forward(model, xt, jnp.full((x0.shape[0],), t, jnp.float32), jnp.asarray(token_ids))
    finally:
        for layer in layers:
            layer.keep_weights = False
    by_side: dict[int, list] = {}
    for _, variable in nnx.to_flat_state(kept):
        w = variable.get_value()
        w = w[0] if isinstance(w, tuple) else w  # (B, heads, positions, L)
        side = int(round(w.shape[2] ** 0.5))
        by_side.setdefault(side, []).append(np.asarray(w.mean(axis=1)).reshape(w.shape[0], side, side, -1))
    return {side: np.mean(maps, axis=0) for side, maps in sorted(by_side.items())}
