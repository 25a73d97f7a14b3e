"""A bag of words: a caption as the set of its words, order forgotten.

Each word becomes a learned vector, and nothing else happens: no word sees
another, and no position is added. The denoiser still gets one vector per
token (to cross-attend to) and a pooled vector (their mean), so this encoder
plugs in where the transformer does. Cross-attention over vectors that carry
no position is blind to order: "a red bird with black wings" and "a black bird
with red wings" are the same bag, so the model can only guess which part gets
which colour. Chapter 5's swapped-colours test measures exactly that; the
order-aware encoders (`lstm`, the transformer of `minidiff.captions`) pass it.

Bags of word vectors were the text side of early image–text models (e.g. the
averaged word2vec embeddings of Reed et al. 2016's baselines).
"""

import jax.numpy as jnp
from flax import nnx

from minidiff.captions import PAD, TextEncoderConfig


def masked_mean(x, mask):
    """The mean over a caption's tokens, padding left out: x (B, L, D), mask (B, L) -> (B, D)."""
    weights = mask[..., None].astype(x.dtype)
    return jnp.sum(x * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


class BagOfWords(nnx.Module):
    """Token ids (B, L) -> word vectors (B, L, D), the padding mask (B, L), their mean (B, D)."""

    def __init__(self, config: TextEncoderConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.token_embedding = nnx.Embed(config.vocab_size, config.dim,
                                         embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        # The same output scale as the other encoders, whose last layer is a LayerNorm too.
        self.norm = nnx.LayerNorm(config.dim, rngs=rngs)

    def __call__(self, token_ids):
        mask = token_ids != PAD
        x = self.norm(self.token_embedding(token_ids))  # (B, L, D): each word alone
        return x, mask, masked_mean(x, mask)
