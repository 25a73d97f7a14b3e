"""T5's encoder: the frozen text encoder Imagen conditions on.

T5 (Raffel et al. 2020) is an encoder-decoder transformer pretrained on text
alone, to fill in spans of words that were blanked out. Imagen (Saharia et al.
2022) keeps only the encoder, frozen, and found that a larger T5 helped its
images more than a larger U-Net did (sec. 4.4). Against the transformer of
`minidiff.captions`, T5 changes three things:

- positions are not embeddings added to the input but a learned bias on the
  attention logits, one number per head for each bucket of relative distance
  (sec. 2.1), computed in the first layer and shared by all of them;
- the layer norms only rescale (no mean subtracted, no bias: an RMS norm);
- the attention logits are not divided by sqrt(d): T5's initialisation
  folds that factor into the query weights.

T5 v1.1 and FLAN-T5 replace the ReLU feed-forward by a gated GELU (Shazeer
2020); DeepFloyd IF, an open reproduction of Imagen, reads T5 v1.1 XXL. This module computes what HF
transformers' `T5EncoderModel(input_ids, attention_mask=ids != pad)` computes,
from the weights its safetensors files hold (`minidiff.text_encoders.pretrained`).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from minidiff.text_encoders.bag_of_words import masked_mean

# feed_forward_proj -> (is the feed-forward gated, its activation). transformers
# maps "gated-gelu" to "gelu_new", GELU's tanh approximation, as T5 v1.1 was trained.
FEED_FORWARDS = {
    "relu": (False, jax.nn.relu),
    "gated-gelu": (True, lambda x: jax.nn.gelu(x, approximate=True)),
}


@dataclasses.dataclass(frozen=True)
class T5Config:
    """The fields of a transformers `T5Config` the encoder needs (defaults: transformers', t5-small's)."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward_proj: str = "relu"
    layer_norm_epsilon: float = 1e-6
    pad_token_id: int = 0

    def __post_init__(self):
        if self.feed_forward_proj not in FEED_FORWARDS:
            raise ValueError(f"feed_forward_proj {self.feed_forward_proj!r} is not one this T5 encoder knows: "
                             f"use one of {sorted(FEED_FORWARDS)}")

    @classmethod
    def from_hf_dict(cls, d: dict) -> "T5Config":
        """From a config.json of T5EncoderModel or T5ForConditionalGeneration (the decoder's fields are left out)."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in d.items() if name in names})


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """(L, L) bucket of each key position relative to each query position (T5, sec. 2.1).

    Half the buckets are for keys after the query, half for keys before. Within
    a half, the nearest distances get one bucket each, and the rest share
    buckets whose width grows logarithmically up to max_distance; anything
    farther falls in the last bucket. A function of the length alone, so numpy
    computes it while tracing (a constant of the compiled program). The float32
    arithmetic is transformers' own (`T5Attention._relative_position_bucket`):
    at the edges of the logarithmic buckets, rounding decides the bucket.
    """
    positions = np.arange(length)
    relative = positions[None, :] - positions[:, None]  # (Lq, Lk): key minus query
    half = num_buckets // 2
    buckets = (relative > 0) * half
    distance = np.abs(relative)
    exact = half // 2
    scaled = np.log(np.maximum(distance, 1).astype(np.float32) / exact) / math.log(max_distance / exact)
    far = exact + (scaled * (half - exact)).astype(np.int64)
    return buckets + np.where(distance < exact, distance, np.minimum(far, half - 1))


class SelfAttention(nnx.Module):
    """Multi-head self-attention with an additive position bias, without 1/sqrt(d) (T5Attention)."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.heads, self.head_dim = config.num_heads, config.d_kv
        inner = config.num_heads * config.d_kv  # not always d_model: t5-3b has 32 heads of 128 for d_model 1024
        self.query = nnx.Linear(config.d_model, inner, use_bias=False, rngs=rngs)
        self.key = nnx.Linear(config.d_model, inner, use_bias=False, rngs=rngs)
        self.value = nnx.Linear(config.d_model, inner, use_bias=False, rngs=rngs)
        self.output = nnx.Linear(inner, config.d_model, use_bias=False, rngs=rngs)

    def __call__(self, x, position_bias, mask):  # x: (B, L, D), position_bias: (H, L, L), mask: (B, L)
        batch, length, _ = x.shape
        shape = (batch, length, self.heads, self.head_dim)
        q, k, v = self.query(x).reshape(shape), self.key(x).reshape(shape), self.value(x).reshape(shape)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) + position_bias[None]
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)  # padding is no key
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        attended = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, -1)
        return self.output(attended)


class FeedForward(nnx.Module):
    """relu: out(relu(in(x))). Gated (T5 v1.1): out(gelu(gate(x)) * in(x)), a GELU gate on a linear map."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.kind = config.feed_forward_proj
        gated, _ = FEED_FORWARDS[self.kind]
        self.mlp_gate = nnx.Linear(config.d_model, config.d_ff, use_bias=False, rngs=rngs) if gated else None
        self.mlp_in = nnx.Linear(config.d_model, config.d_ff, use_bias=False, rngs=rngs)
        self.mlp_out = nnx.Linear(config.d_ff, config.d_model, use_bias=False, rngs=rngs)

    def __call__(self, x):  # (B, L, D)
        gated, activation = FEED_FORWARDS[self.kind]
        if gated:
            return self.mlp_out(activation(self.mlp_gate(x)) * self.mlp_in(x))
        return self.mlp_out(activation(self.mlp_in(x)))


class EncoderLayer(nnx.Module):
    """Pre-norm layer: x + attention(norm(x)), then x + feed_forward(norm(x))."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        # nnx.RMSNorm is T5LayerNorm: x / sqrt(mean(x^2) + eps) * scale, in float32.
        self.attention_norm = nnx.RMSNorm(config.d_model, epsilon=config.layer_norm_epsilon, rngs=rngs)
        self.attention = SelfAttention(config, rngs=rngs)
        self.mlp_norm = nnx.RMSNorm(config.d_model, epsilon=config.layer_norm_epsilon, rngs=rngs)
        self.feed_forward = FeedForward(config, rngs=rngs)

    def __call__(self, x, position_bias, mask):  # (B, L, D)
        x = x + self.attention(self.attention_norm(x), position_bias, mask)
        return x + self.feed_forward(self.mlp_norm(x))


class T5TextEncoder(nnx.Module):
    """Token ids (B, L) -> token outputs (B, L, D), the padding mask (B, L), their mean (B, D).

    tokens equal transformers' `T5EncoderModel(ids, attention_mask=ids != pad)
    .last_hidden_state`. Padding is never attended to, so a caption's outputs
    do not depend on how far it was padded. T5 has no pooled output of its
    own; the mean over the caption's tokens serves as the pooled vector Imagen
    adds to its noise-level embedding (Saharia et al. 2022, sec. 2.5).
    """

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.config = config
        self.token_embedding = nnx.Embed(config.vocab_size, config.d_model, rngs=rngs)
        # One learned logit bias per (bucket of relative distance, head), used by every layer.
        self.relative_attention_bias = nnx.Embed(config.relative_attention_num_buckets, config.num_heads, rngs=rngs)
        self.layers = nnx.List([EncoderLayer(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = nnx.RMSNorm(config.d_model, epsilon=config.layer_norm_epsilon, rngs=rngs)

    def __call__(self, token_ids):  # (B, L) int32
        mask = token_ids != self.config.pad_token_id  # (B, L)
        buckets = relative_position_buckets(token_ids.shape[1], self.config.relative_attention_num_buckets,
                                            self.config.relative_attention_max_distance)  # (L, L)
        position_bias = jnp.transpose(self.relative_attention_bias(jnp.asarray(buckets)), (2, 0, 1))  # (H, L, L)
        x = self.token_embedding(token_ids)  # (B, L, D)
        for layer in self.layers:
            x = layer(x, position_bias, mask)
        tokens = self.final_norm(x)  # (B, L, D)
        return tokens, mask, masked_mean(tokens, mask)
