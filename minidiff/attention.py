"""Attention, shared by the denoiser (stage 2) and the caption encoder (stage 3).

One operation does three jobs in a text-to-image model: the caption encoder's
words attend to one another (self-attention over tokens), the U-Net's image
positions attend to one another (self-attention over pixels), and image
positions look up the words that concern them (cross-attention, queries from
the image, keys and values from the caption; Rombach et al. 2022, sec. 3.3).
"""

import jax
import jax.numpy as jnp
from flax import nnx


def attention_weights(q, k, mask=None):
    """softmax(q k^T / sqrt(d)): how much each query looks at each key, (B, heads, Lq, Lk), rows summing to 1.

    q: (B, Lq, heads, d); k: (B, Lk, heads, d); mask: (B, Lk) True where a key may be attended to."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    if mask is not None:
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def attention(q, k, v, mask=None):
    """Scaled dot-product attention, softmax(q k^T / sqrt(d)) v (Vaswani et al. 2017, eq. 1).

    q: (B, Lq, heads, d); k, v: (B, Lk, heads, d); mask: (B, Lk) True where a
    key may be attended to. Returns (B, Lq, heads, d).
    """
    return jnp.einsum("bhqk,bkhd->bqhd", attention_weights(q, k, mask).astype(v.dtype), v)


class MultiHeadAttention(nnx.Module):
    """Queries from one sequence, keys and values from another (or the same).

    With `zero_output`, the output projection starts at zero, so that a residual branch
    built on it starts as nothing (as DiT's adaLN-Zero wants it). While `keep_weights` is
    set, each call also keeps its attention weights (`nnx.Intermediate` "weights"), for
    pictures of what looked at what (`minidiff.evaluation.attention_maps`)."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, *, zero_output: bool = False, rngs: nnx.Rngs):
        if query_dim % heads:
            raise ValueError(f"width {query_dim} is not divisible by {heads} heads")
        self.heads = heads
        self.to_q = nnx.Linear(query_dim, query_dim, use_bias=False, rngs=rngs)
        self.to_kv = nnx.Linear(context_dim, 2 * query_dim, use_bias=False, rngs=rngs)
        start = {"kernel_init": nnx.initializers.zeros} if zero_output else {}
        self.out = nnx.Linear(query_dim, query_dim, **start, rngs=rngs)
        self.keep_weights = False

    def __call__(self, x, context, mask=None):  # x: (B, L, D), context: (B, Lc, Dc)
        b, length, dim = x.shape
        q = self.to_q(x).reshape(b, length, self.heads, dim // self.heads)
        k, v = jnp.split(self.to_kv(context), 2, axis=-1)
        k = k.reshape(b, context.shape[1], self.heads, dim // self.heads)
        v = v.reshape(b, context.shape[1], self.heads, dim // self.heads)
        if self.keep_weights:
            self.sow(nnx.Intermediate, "weights", attention_weights(q, k, mask))
        return self.out(attention(q, k, v, mask).reshape(b, length, dim))
