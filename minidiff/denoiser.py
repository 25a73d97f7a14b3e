"""Stage 2 — the denoiser: a U-Net that looks at a noisy image and says what to remove.

The network (Ronneberger et al. 2015, as adapted for diffusion by Ho et al.
2020, appendix B, and Dhariwal & Nichol 2021) takes
  - x_t, the noisy image, (B, H, W, C),
  - the noise level t in [0, 1], (B,),
  - the caption as token embeddings (B, L, D), their mask (B, L) and a pooled
    summary (B, D) (from `minidiff.captions.TextEncoder`),
and predicts what the process asks of it (eps, x0 or v for diffusion, see
`minidiff.corruption.x0_and_eps`), shaped like x_t. Its input may have more
channels than its output (`in_channels`): whatever else is shown beside x_t.

Reading order, smallest piece first: the noise-level embedding, a residual
block, an attention block (self-attention over image positions,
cross-attention from image positions to caption tokens, a feed-forward), the down and up
levels, and the whole U-Net.

A "patch" stem folds each p x p patch of pixels into channels (space to
depth), so the U-Net runs at (H/p, W/p) with p^2 C input channels — a 4x
cheaper network at p = 2, which is what makes CPU training practical.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from minidiff.attention import MultiHeadAttention


def noise_level_embedding(t, dim: int, max_period: float = 10_000.0):
    """Sinusoidal features of the noise level (Vaswani et al. 2017, sec. 3.5; Ho et al. 2020).

    t in [0, 1] is scaled to [0, 1000] so the frequencies match the usual
    integer-timestep embedding. (B,) -> (B, dim).
    """
    half = dim // 2
    frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = 1000.0 * t[:, None].astype(jnp.float32) * frequencies[None]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def space_to_depth(x, p: int):
    """(B, H, W, C) -> (B, H/p, W/p, p*p*C): each p x p patch becomes one position."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // p, w // p, p * p * c)


def depth_to_space(x, p: int):
    """The inverse of `space_to_depth`."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, p, p, c // (p * p)).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * p, w * p, c // (p * p))


def upsample_nearest(x):
    """(B, H, W, C) -> (B, 2H, 2W, C) by repeating pixels (jnp.repeat has a much
    cheaper gradient than jax.image.resize)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def modulate(h, projection: nnx.Linear, cond):
    """Adaptive normalisation: h * (1 + scale) + shift, one scale and shift per channel, projected
    from the conditioning (B, cond_dim) (Dhariwal & Nichol 2021, sec. 3; Peebles & Xie 2023, sec. 3.2).
    h: (B, H, W, C), projection: cond_dim -> 2C."""
    scale, shift = jnp.split(projection(jax.nn.silu(cond))[:, None, None, :], 2, axis=-1)
    return h * (1.0 + scale) + shift


class ResidualBlock(nnx.Module):
    """GroupNorm -> SiLU -> conv, modulated by the conditioning, twice, plus a skip.

    The conditioning vector (noise level + pooled caption) sets a per-channel
    scale and shift after the second normalisation ("adaptive group norm",
    Dhariwal & Nichol 2021, sec. 3). The last conv starts at zero, so each block
    starts as the identity and a deep network trains stably.
    """

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, groups: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.GroupNorm(in_channels, num_groups=min(groups, in_channels), rngs=rngs)
        self.conv1 = nnx.Conv(in_channels, out_channels, (3, 3), rngs=rngs)
        self.cond = nnx.Linear(cond_dim, 2 * out_channels, rngs=rngs)
        self.norm2 = nnx.GroupNorm(out_channels, num_groups=min(groups, out_channels), rngs=rngs)
        self.conv2 = nnx.Conv(out_channels, out_channels, (3, 3), kernel_init=nnx.initializers.zeros, rngs=rngs)
        self.skip = nnx.Conv(in_channels, out_channels, (1, 1), rngs=rngs) if in_channels != out_channels else None

    def __call__(self, x, cond):  # x: (B, H, W, Cin), cond: (B, cond_dim)
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = modulate(self.norm2(h), self.cond, cond)
        h = self.conv2(jax.nn.silu(h))
        return h + (self.skip(x) if self.skip is not None else x)  # (B, H, W, Cout)


class AttentionBlock(nnx.Module):
    """A transformer over image positions: self-attention, cross-attention to the caption, a feed-forward.

    Self-attention lets distant parts of the image agree (both wings the same
    colour); cross-attention is where each image position looks up the words
    that concern it; the feed-forward then works on what each position has
    gathered. This is Stable Diffusion's "spatial transformer" (Rombach et al.
    2022, sec. 3.3 and appendix): GroupNorm, a projection in, three pre-norm
    residual sub-layers, a projection out, and a residual around it all.
    """

    def __init__(self, channels: int, caption_dim: int, heads: int, groups: int, *, rngs: nnx.Rngs):
        self.norm = nnx.GroupNorm(channels, num_groups=min(groups, channels), rngs=rngs)
        self.project_in = nnx.Linear(channels, channels, rngs=rngs)
        self.norm_self = nnx.LayerNorm(channels, rngs=rngs)
        self.self_attention = MultiHeadAttention(channels, channels, heads, rngs=rngs)
        self.norm_cross = nnx.LayerNorm(channels, rngs=rngs)
        self.cross_attention = MultiHeadAttention(channels, caption_dim, heads, rngs=rngs)
        self.norm_mlp = nnx.LayerNorm(channels, rngs=rngs)
        # GEGLU (Shazeer 2020): a 4x wider hidden layer, gated by GELU of a second projection.
        self.mlp_in = nnx.Linear(channels, 2 * 4 * channels, rngs=rngs)
        self.mlp_out = nnx.Linear(4 * channels, channels, rngs=rngs)
        self.project_out = nnx.Linear(channels, channels, rngs=rngs)

    def __call__(self, x, caption_tokens, caption_mask):
        b, h, w, c = x.shape
        tokens = self.project_in(self.norm(x).reshape(b, h * w, c))  # (B, HW, C)
        normed = self.norm_self(tokens)
        tokens = tokens + self.self_attention(normed, normed)
        tokens = tokens + self.cross_attention(self.norm_cross(tokens), caption_tokens, caption_mask)
        hidden, gate = jnp.split(self.mlp_in(self.norm_mlp(tokens)), 2, axis=-1)
        tokens = tokens + self.mlp_out(hidden * jax.nn.gelu(gate, approximate=False))
        return x + self.project_out(tokens).reshape(b, h, w, c)


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    image_size: int = 32
    in_channels: int = 3  # channels of the input: x_t's (RGB), and of anything concatenated to it
    out_channels: int = 3  # channels of the prediction: x_t's
    patch_size: int = 2  # space-to-depth stem; 1 = plain pixels
    widths: tuple[int, ...] = (64, 128, 128)  # channels at each resolution level
    blocks_per_level: int = 1
    attention_resolutions: tuple[int, ...] = (8, 4)  # feature-map sizes with attention
    heads: int = 4
    groups: int = 16  # GroupNorm groups
    cond_dim: int = 256  # noise-level (+ pooled caption) embedding
    caption_dim: int = 128  # width of the caption token embeddings
    # The last GroupNorm, too, takes a scale and shift from the conditioning (DiT's final layer,
    # Peebles & Xie 2023, sec. 3.2). See `UNet.__call__` for why. False: a plain GroupNorm, as in
    # diffusers' UNet2DConditionModel.
    modulated_output_norm: bool = True

    @property
    def level_sizes(self) -> tuple[int, ...]:
        """The feature-map side at each level: image_size / patch_size, halved at every level down."""
        return tuple(self.image_size // self.patch_size // 2**i for i in range(len(self.widths)))

    def __post_init__(self):
        down = self.patch_size * 2 ** (len(self.widths) - 1)
        if self.image_size < down or self.image_size % down:
            raise ValueError(
                f"image_size {self.image_size} must be a positive multiple of patch_size * 2^(levels - 1) = {down}"
            )

    def describe(self) -> str:
        attended = [f"{n}x{n}" for n in self.level_sizes if n in self.attention_resolutions] + ["the middle"]
        return f"U-Net of widths {', '.join(map(str, self.widths))}, attention at {', '.join(attended)}"


class Level(nnx.Module):
    """One resolution of the U-Net: residual blocks, each optionally followed by attention."""

    def __init__(self, in_channels: list[int], out_channels: int, attend: bool, config: UNetConfig, *, rngs: nnx.Rngs):
        c = config
        self.resblocks = nnx.List(
            [ResidualBlock(cin, out_channels, c.cond_dim, c.groups, rngs=rngs) for cin in in_channels]
        )
        self.attentions = nnx.List(
            [AttentionBlock(out_channels, c.caption_dim, c.heads, c.groups, rngs=rngs) for _ in in_channels]
            if attend
            else []
        )

    def __call__(self, h, cond, caption, take_skips=None, keep_skips=None):
        """Run the blocks. On the up path each block first concatenates an
        activation popped from `take_skips`; on the down path each block's
        output is appended to `keep_skips`."""
        for i, block in enumerate(self.resblocks):
            if take_skips is not None:
                h = jnp.concatenate([h, take_skips.pop()], axis=-1)
            h = block(h, cond)
            if self.attentions:
                h = self.attentions[i](h, *caption)
            if keep_skips is not None:
                keep_skips.append(h)
        return h


class Middle(nnx.Module):
    """The bottleneck, where the whole image is in view: a residual block, attention, a residual block."""

    def __init__(self, channels: int, config: UNetConfig, *, rngs: nnx.Rngs):
        c = config
        self.resblock1 = ResidualBlock(channels, channels, c.cond_dim, c.groups, rngs=rngs)
        self.attention = AttentionBlock(channels, c.caption_dim, c.heads, c.groups, rngs=rngs)
        self.resblock2 = ResidualBlock(channels, channels, c.cond_dim, c.groups, rngs=rngs)

    def __call__(self, h, cond, caption):
        return self.resblock2(self.attention(self.resblock1(h, cond), *caption), cond)


class UNet(nnx.Module):
    """The U-Net: a down path that keeps its activations, a middle, an up path that
    concatenates them back in (the skip connections that give the "U")."""

    def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        p = c.patch_size
        self.cond_in = nnx.Linear(c.widths[0], c.cond_dim, rngs=rngs)
        self.cond_out = nnx.Linear(c.cond_dim, c.cond_dim, rngs=rngs)
        self.caption_to_cond = nnx.Linear(c.caption_dim, c.cond_dim, rngs=rngs)
        self.stem = nnx.Conv(p * p * c.in_channels, c.widths[0], (3, 3), rngs=rngs)

        # The down path: remember the width of every activation kept for a skip.
        skip_widths, width, size = [c.widths[0]], c.widths[0], c.image_size // p
        down, downsamplers = [], []
        for i, out in enumerate(c.widths):
            ins = [width] + [out] * (c.blocks_per_level - 1)
            down.append(Level(ins, out, size in c.attention_resolutions, c, rngs=rngs))
            width = out
            skip_widths += [out] * c.blocks_per_level
            if i < len(c.widths) - 1:
                # Padding 1 on every side, as in PyTorch, rather than 'SAME' (which pads only after).
                downsamplers.append(nnx.Conv(width, width, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), rngs=rngs))
                skip_widths.append(width)
                size //= 2
        self.down, self.downsamplers = nnx.List(down), nnx.List(downsamplers)

        self.middle = Middle(width, c, rngs=rngs)

        # The up path: each block eats one skip, in reverse order.
        up, upsamplers = [], []
        for i, out in reversed(list(enumerate(c.widths))):
            ins = []
            for _ in range(c.blocks_per_level + 1):
                ins.append(width + skip_widths.pop())
                width = out
            up.append(Level(ins, out, size in c.attention_resolutions, c, rngs=rngs))
            if i > 0:
                upsamplers.append(nnx.Conv(width, width, (3, 3), rngs=rngs))
                size *= 2
        self.up, self.upsamplers = nnx.List(up), nnx.List(upsamplers)

        self.out_norm = nnx.GroupNorm(width, num_groups=min(c.groups, width), rngs=rngs)
        self.out_cond = nnx.Linear(c.cond_dim, 2 * width, rngs=rngs) if c.modulated_output_norm else None
        self.out = nnx.Conv(width, p * p * c.out_channels, (3, 3), kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, xt, t, caption_tokens, caption_mask, caption_pooled):
        c = self.config
        # Sinusoids as many as the first level's channels, then an MLP up to cond_dim (as Stable Diffusion does).
        cond = noise_level_embedding(t, c.widths[0]).astype(xt.dtype)  # bfloat16 too, under mixed precision
        cond = self.cond_out(jax.nn.silu(self.cond_in(cond))) + self.caption_to_cond(caption_pooled)  # (B, cond_dim)
        caption = (caption_tokens, caption_mask)

        h = self.stem(space_to_depth(xt, c.patch_size))  # (B, H/p, W/p, widths[0])
        skips = [h]
        for i, level in enumerate(self.down):
            h = level(h, cond, caption, keep_skips=skips)
            if i < len(self.downsamplers):
                h = self.downsamplers[i](h)  # halve the resolution
                skips.append(h)

        h = self.middle(h, cond, caption)

        for i, level in enumerate(self.up):
            h = level(h, cond, caption, take_skips=skips)
            if i < len(self.upsamplers):
                h = self.upsamplers[i](upsample_nearest(h))  # double the resolution
        h = self.out_norm(h)
        if self.out_cond is not None:
            # Every residual block's use of the noise level passes through its zero-initialised last
            # conv, which takes many steps to grow; until then the network cannot tell a
            # noisy input from a clean one, and its loss sits on a plateau (the best prediction
            # blind to t). Here the noise level reaches the output directly (docs/adherence.md has
            # what that changed).
            h = modulate(h, self.out_cond, cond)
        h = self.out(jax.nn.silu(h))
        return depth_to_space(h, c.patch_size)  # (B, H, W, out_channels)
