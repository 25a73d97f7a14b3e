"""A bidirectional LSTM: the recurrent text encoder of the GAN era.

Reed et al. 2016 encoded the flower and bird captions this course trains on
with recurrent networks; an LSTM (Hochreiter & Schmidhuber 1997) reads a
caption one word at a time, carrying a memory from word to word. One LSTM reads
left to right, another right to left (Schuster & Paliwal 1997), and each
token's vector joins the two: what came before the word and what comes after.
So "red" in "a red bird with black wings" knows it precedes "bird", and the
denoiser can tell that caption from "a black bird with red wings" — which a bag
of words (`bag_of_words`) cannot.

The cells and the scan over time are flax.nnx's own (`nnx.OptimizedLSTMCell`,
`nnx.RNN`, `nnx.Bidirectional`). Padding is handled by giving each caption's
length: the backward LSTM starts at the caption's last word, not at the end of
the padding, so padding never changes a caption's vectors.
"""

import jax.numpy as jnp
from flax import nnx

from minidiff.captions import PAD, TextEncoderConfig
from minidiff.text_encoders.bag_of_words import masked_mean


class BidirectionalLayer(nnx.Module):
    """(B, L, D) -> (B, L, D): D // 2 features from each direction, added to the input (a residual)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        def direction():
            cell = nnx.OptimizedLSTMCell(dim, dim // 2, keep_rngs=False, rngs=rngs)
            return nnx.RNN(cell, rngs=False)

        self.hidden = dim // 2
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.lstm = nnx.Bidirectional(direction(), direction(), rngs=False)

    def __call__(self, x, lengths):
        # Each sentence starts from a blank memory: c = h = 0, in both directions.
        zeros = jnp.zeros((x.shape[0], self.hidden), x.dtype)
        blank = ((zeros, zeros), (zeros, zeros))
        return x + self.lstm(self.norm(x), seq_lengths=lengths, initial_carry=blank)


class BiLSTMEncoder(nnx.Module):
    """Token ids (B, L) -> token vectors (B, L, D), the padding mask (B, L), their mean (B, D)."""

    def __init__(self, config: TextEncoderConfig, *, rngs: nnx.Rngs):
        if config.dim % 2:
            raise ValueError(f"a bidirectional LSTM splits dim between its two directions: use an even dim, "
                             f"not {config.dim}")
        self.config = config
        self.token_embedding = nnx.Embed(config.vocab_size, config.dim,
                                         embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.layers = nnx.List([BidirectionalLayer(config.dim, rngs=rngs) for _ in range(config.depth)])
        self.norm = nnx.LayerNorm(config.dim, rngs=rngs)

    def __call__(self, token_ids):
        mask = token_ids != PAD  # BOS, then the words, then padding
        lengths = jnp.sum(mask, axis=1)  # (B,)
        x = self.token_embedding(token_ids)  # (B, L, D); no positions: the recurrence knows the order
        for layer in self.layers:
            x = layer(x, lengths)
        x = self.norm(x)
        return x, mask, masked_mean(x, mask)
