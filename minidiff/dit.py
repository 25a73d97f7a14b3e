"""Stage 2, its later form — the denoiser as a transformer over image patches (DiT).

Since 2023 the field's denoisers have moved from convolutional U-Nets to plain
transformers: cut the noisy image into p x p patches, treat each patch as a
token, run a stack of transformer blocks over the tokens, and turn each token
back into its patch (Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers"). There is no downsampling and no skip connection: every block
sees every patch, at one resolution. What the U-Net's adaptive group norms did
for the noise level, adaptive layer norms do here: the conditioning vector
sets a per-channel shift and scale of each normalised input, and a gate on
each residual branch.

This DiT takes the same inputs as `minidiff.denoiser.UNet`, and its config the
same `image_size`, `in_channels` and `out_channels`, so the rest of minidiff
cannot tell them apart:
  - x_t, the noisy image, (B, H, W, C), and the noise level t in [0, 1], (B,),
  - the caption as token embeddings (B, L, D), their mask (B, L) and a pooled
    summary (B, D),
and predicts what the model's process asks for, shaped like x_t.

Text enters twice. Each block has a cross-attention from its patches to the
caption's tokens, as in PixArt-α (Chen et al. 2023, sec. 2.3), the DiT made
text-to-image (DiT itself was conditioned on a class label). And, unlike
PixArt-α, whose adaptive norms see the noise level alone, the pooled caption
joins the noise level in the conditioning vector, as it does in minidiff's
U-Net (and in SD3, Esser et al. 2024). The adaptive norms are PixArt-α's
"adaLN-single": one projection of the conditioning, shared by
every block, plus a small learned table per block, in place of DiT's own
projection in every block (about a quarter of DiT's parameters, PixArt-α sec. 2.3). Everything that
writes into the residual stream starts at zero (the gates, the cross-attention's
output, the last layer): DiT's "adaLN-Zero", under which each block starts as
the identity and the network as a function that outputs zero.

Reading order: the patches' positions, one block, the whole network.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from minidiff.attention import MultiHeadAttention
from minidiff.denoiser import depth_to_space, noise_level_embedding, space_to_depth


def sincos_positions(grid: int, dim: int) -> np.ndarray:
    """Fixed 2-D sine-cosine position embeddings of a grid x grid of patches, (grid^2, dim), row by row.

    A transformer sees a set of tokens; this tells it where each patch sits. The
    first half of each vector encodes the column, the second half the row, each
    as [sin, cos] of the position at dim/4 frequencies (Vaswani et al. 2017,
    sec. 3.5, in 2-D as in MAE, He et al. 2022, and DiT)."""
    frequencies = 1.0 / 10_000 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))  # (dim/4,)
    rows, columns = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")

    def encode(position):  # (grid, grid) -> (grid^2, dim/2)
        angles = position.reshape(-1, 1) * frequencies[None]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([encode(columns), encode(rows)], axis=1).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    image_size: int = 32
    in_channels: int = 3  # channels of the input: x_t's (RGB), and of anything concatenated to it
    out_channels: int = 3  # channels of the prediction: x_t's
    patch_size: int = 2  # each p x p patch is one token: (H / p)^2 tokens
    width: int = 128  # the tokens' width
    depth: int = 4  # transformer blocks
    heads: int = 4
    caption_dim: int = 128  # width of the caption token embeddings
    frequency_dim: int = 256  # sinusoids of the noise level (DiT's 256)

    def __post_init__(self):
        if self.image_size < self.patch_size or self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a positive multiple of patch_size "
                             f"{self.patch_size}")
        if self.width % self.heads or self.width % 4:
            raise ValueError(f"width {self.width} must be divisible by 4 (the 2-D positions) and by {self.heads} heads")

    @property
    def grid(self) -> int:
        """Patches along each side."""
        return self.image_size // self.patch_size

    def describe(self) -> str:
        return (f"DiT, {self.depth} blocks of width {self.width} over {self.grid}x{self.grid} patches of "
                f"{self.patch_size}x{self.patch_size} px")


def layer_norm(width: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """A LayerNorm without its own scale and shift: the conditioning supplies them."""
    return nnx.LayerNorm(width, epsilon=1e-6, use_scale=False, use_bias=False, rngs=rngs)


class DiTBlock(nnx.Module):
    """Self-attention over patches, cross-attention to the caption, a feed-forward; each a residual branch.

    `modulation` (B, 6, D) is the shared projection of the conditioning; adding
    this block's own table gives the shift and scale of the two normalised
    inputs and the gates of the two branches (PixArt-α's adaLN-single). The
    cross-attention reads the raw residual stream, ungated, as in PixArt-α.
    """

    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
        self.table = nnx.Param(jnp.zeros((6, width)))
        self.norm_self = layer_norm(width, rngs)
        self.self_attention = MultiHeadAttention(width, width, heads, rngs=rngs)
        self.cross_attention = MultiHeadAttention(width, width, heads, zero_output=True, rngs=rngs)
        self.norm_mlp = layer_norm(width, rngs)
        self.mlp_in = nnx.Linear(width, 4 * width, rngs=rngs)
        self.mlp_out = nnx.Linear(4 * width, width, rngs=rngs)

    def __call__(self, x, modulation, caption_tokens, caption_mask):  # x: (B, N, D), modulation: (B, 6, D)
        shift_self, scale_self, gate_self, shift_mlp, scale_mlp, gate_mlp = jnp.split(
            self.table[...] + modulation, 6, axis=1)  # each (B, 1, D), broadcast over the patches
        h = self.norm_self(x) * (1 + scale_self) + shift_self
        x = x + gate_self * self.self_attention(h, h)
        x = x + self.cross_attention(x, caption_tokens, caption_mask)
        h = self.norm_mlp(x) * (1 + scale_mlp) + shift_mlp
        return x + gate_mlp * self.mlp_out(jax.nn.gelu(self.mlp_in(h), approximate=True))


class DiT(nnx.Module):
    """Patches in, a stack of `DiTBlock`s, patches out."""

    def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        width, p = c.width, c.patch_size
        # A linear map of each flattened patch: a p x p convolution with stride p, as DiT's "patchify".
        self.patch_in = nnx.Linear(p * p * c.in_channels, width, rngs=rngs)
        # The conditioning: sinusoids of the noise level through an MLP, plus the pooled caption.
        self.time_in = nnx.Linear(c.frequency_dim, width, rngs=rngs)
        self.time_out = nnx.Linear(width, width, rngs=rngs)
        self.caption_to_cond = nnx.Linear(c.caption_dim, width, rngs=rngs)
        # The caption's tokens, brought to the blocks' width by a small MLP (PixArt-α's caption projection).
        self.caption_in = nnx.Linear(c.caption_dim, width, rngs=rngs)
        self.caption_out = nnx.Linear(width, width, rngs=rngs)
        zeros = nnx.initializers.zeros
        self.modulation = nnx.Linear(width, 6 * width, kernel_init=zeros, rngs=rngs)  # adaLN-single, starting at 0
        self.blocks = nnx.List([DiTBlock(width, c.heads, rngs=rngs) for _ in range(c.depth)])
        self.out_table = nnx.Param(jnp.zeros((2, width)))
        self.out_norm = layer_norm(width, rngs)
        self.out = nnx.Linear(width, p * p * c.out_channels, kernel_init=zeros, rngs=rngs)

    def __call__(self, xt, t, caption_tokens, caption_mask, caption_pooled):
        c = self.config
        b, p, grid = xt.shape[0], c.patch_size, c.grid
        patches = space_to_depth(xt, p).reshape(b, grid * grid, p * p * c.in_channels)  # (B, N, p^2 C_in)
        x = self.patch_in(patches) + sincos_positions(grid, c.width).astype(xt.dtype)  # (B, N, D)

        time = noise_level_embedding(t, c.frequency_dim).astype(xt.dtype)  # bfloat16 too, under mixed precision
        cond = self.time_out(jax.nn.silu(self.time_in(time))) + self.caption_to_cond(caption_pooled)  # (B, D)
        modulation = self.modulation(jax.nn.silu(cond)).reshape(b, 6, c.width)
        context = self.caption_out(jax.nn.gelu(self.caption_in(caption_tokens), approximate=True))  # (B, L, D)

        for block in self.blocks:
            x = block(x, modulation, context, caption_mask)

        # The last layer's shift and scale come from the conditioning as it is (PixArt-α's final layer).
        shift, scale = jnp.split(self.out_table[...] + cond[:, None], 2, axis=1)  # each (B, 1, D)
        x = self.out(self.out_norm(x) * (1 + scale) + shift)  # (B, N, p^2 C_out)
        return depth_to_space(x.reshape(b, grid, grid, p * p * c.out_channels), p)  # (B, H, W, C_out)
