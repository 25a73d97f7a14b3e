"""CLIP's text encoder: what Stable Diffusion 1.x conditions on.

CLIP (Radford et al. 2021) trains an image encoder and a text encoder together
so that an image and its caption land on nearby vectors. Its text half is a
GPT-2-style transformer (sec. 2.4): pre-norm layers, learned absolute position
embeddings, and a causal mask, so each token sees only the tokens before it.
The caption's summary is the output at its end-of-text token (EOS), the one
position that has seen the whole caption. Stable Diffusion 1.x cross-attends to
all the token outputs of the frozen ViT-L/14 text encoder (Rombach et al. 2022).

This module computes what HF transformers' `CLIPTextModel` computes:
`last_hidden_state` and `pooler_output`, from the weights its safetensors files
hold (`minidiff.text_encoders.pretrained` loads them).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

# "quick_gelu" is the sigmoid approximation of GELU the original CLIP was trained
# with; OpenCLIP's models (Stable Diffusion 2) use the exact GELU.
ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """The fields of a transformers `CLIPTextConfig` this encoder needs (defaults: transformers')."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407
    pad_token_id: int = 1

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not one CLIP's text encoder uses; "
                             f"this encoder knows {sorted(ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"{self.num_attention_heads} attention heads")

    @classmethod
    def from_hf_dict(cls, d: dict) -> "CLIPTextConfig":
        """From a config.json: a CLIPTextModel's, or a whole CLIPModel's (its "text_config")."""
        d = d.get("text_config", d)
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in d.items() if name in names})


def pooling_positions(token_ids, eos_token_id: int):
    """The position of each caption's first EOS (B,), where transformers' CLIPTextModel pools.

    This is transformers' own rule, kept exactly: configs written before its
    fix (transformers PR #24773), Stable Diffusion 1.x's among them, give
    eos_token_id 2, and for those it takes the first largest id in the row
    instead, which is where EOS is in CLIP's vocabulary (EOS, 49407, is the
    last id), unless a token was added after it.
    """
    if eos_token_id == 2:
        return jnp.argmax(token_ids, axis=-1)
    return jnp.argmax(token_ids == eos_token_id, axis=-1)  # argmax returns the first True


class SelfAttention(nnx.Module):
    """Causal multi-head self-attention with biased projections, as in CLIPAttention."""

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs):
        dim = config.hidden_size
        self.heads = config.num_attention_heads
        self.query = nnx.Linear(dim, dim, rngs=rngs)
        self.key = nnx.Linear(dim, dim, rngs=rngs)
        self.value = nnx.Linear(dim, dim, rngs=rngs)
        self.output = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x):  # x: (B, L, D)
        batch, length, dim = x.shape
        head_dim = dim // self.heads
        q = self.query(x).reshape(batch, length, self.heads, head_dim)
        k = self.key(x).reshape(batch, length, self.heads, head_dim)
        v = self.value(x).reshape(batch, length, self.heads, head_dim)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * head_dim**-0.5
        # A token attends to itself and to the tokens before it: CLIP's text encoder
        # was trained as a left-to-right transformer.
        causal = jnp.tril(jnp.ones((length, length), bool))  # (Lq, Lk)
        logits = jnp.where(causal, logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        attended = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, dim)
        return self.output(attended)


class EncoderLayer(nnx.Module):
    """Pre-norm transformer layer: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs):
        dim, eps = config.hidden_size, config.layer_norm_eps
        self.activation = config.hidden_act
        # The variance as torch computes it, E[(x - mean)^2], not flax's faster E[x^2] - mean^2,
        # so that the outputs match transformers' to float32 rounding.
        self.attention_norm = nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, rngs=rngs)
        self.attention = SelfAttention(config, rngs=rngs)
        self.mlp_norm = nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, rngs=rngs)
        self.mlp_in = nnx.Linear(dim, config.intermediate_size, rngs=rngs)
        self.mlp_out = nnx.Linear(config.intermediate_size, dim, rngs=rngs)

    def __call__(self, x):  # (B, L, D)
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp_out(ACTIVATIONS[self.activation](self.mlp_in(self.mlp_norm(x))))


class CLIPTextEncoder(nnx.Module):
    """Token ids (B, L) -> token outputs (B, L, D), a mask (B, L), the pooled output (B, D).

    tokens and pooled equal transformers' `CLIPTextModel(input_ids)` outputs
    `last_hidden_state` and `pooler_output` (no attention_mask: CLIP's own
    models read the padding too, and the causal mask keeps it from changing the
    caption's tokens). The mask is True up to and including the first EOS:
    the denoiser cross-attends to the caption and its EOS, the one token that
    has read all of it, and not to the padding after, whose outputs are the
    encoder's guesses at text that is not there. (Stable Diffusion 1.x attends
    to all 77 outputs, padding included; without them, what the denoiser reads
    no longer depends on how far a caption was padded, nor with which token.)
    """

    def __init__(self, config: CLIPTextConfig, *, rngs: nnx.Rngs):
        self.config = config
        dim = config.hidden_size
        self.token_embedding = nnx.Embed(config.vocab_size, dim, rngs=rngs)
        self.position_embedding = nnx.Embed(config.max_position_embeddings, dim, rngs=rngs)
        self.layers = nnx.List([EncoderLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.final_norm = nnx.LayerNorm(dim, epsilon=config.layer_norm_eps, use_fast_variance=False, rngs=rngs)

    def __call__(self, token_ids):  # (B, L) int32
        length = token_ids.shape[1]
        if length > self.config.max_position_embeddings:
            raise ValueError(f"{length} tokens, but CLIP's text encoder has positions for "
                             f"{self.config.max_position_embeddings}")
        x = self.token_embedding(token_ids) + self.position_embedding(jnp.arange(length))[None]  # (B, L, D)
        for layer in self.layers:
            x = layer(x)
        tokens = self.final_norm(x)  # (B, L, D)
        eos = pooling_positions(token_ids, self.config.eos_token_id)  # (B,)
        pooled = jnp.take_along_axis(tokens, eos[:, None, None], axis=1)[:, 0]  # (B, D)
        mask = jnp.arange(length)[None, :] <= eos[:, None]  # (B, L)
        return tokens, mask, pooled
