"""Stage 3 — captions: from a sentence to vectors the denoiser can attend to.

Two parts. A word-level tokenizer turns a caption into a fixed-length row of
integer ids; a small transformer encoder (Vaswani et al. 2017) turns the ids
into one vector per token, which the U-Net reads through cross-attention
(Rombach et al. 2022, sec. 3.3; Saharia et al. 2022 use a frozen T5 instead).
Here the encoder is trained jointly with the denoiser, from scratch.

Every caption starts with a BOS token. An "empty" caption is BOS followed by
padding: the denoiser still has one token to attend to, and that token is what
caption dropout teaches it to treat as "no caption" (Ho & Salimans 2022).
"""

import dataclasses
import re

import jax
import numpy as np
from flax import nnx

from minidiff.attention import MultiHeadAttention

PAD, BOS, UNK, MASK = 0, 1, 2, 3
# MASK stands for a hidden word when an encoder is pretrained to fill words in
# (`minidiff.text_encoders.masked_language_model`); a caption never holds it.
SPECIAL_TOKENS = ("<pad>", "<bos>", "<unk>", "<mask>")
_WORD = re.compile(r"[a-z0-9]+")


def words(caption: str) -> list[str]:
    """Lower-case words; punctuation is dropped (it carries little in these captions)."""
    return _WORD.findall(caption.lower())


class CaptionError(ValueError):
    """A caption the model cannot read (empty, or too long)."""


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """A word vocabulary built from training captions; unknown words map to UNK.

    `max_length` counts the BOS token, so a caption may hold max_length - 1 words.
    """

    vocabulary: tuple[str, ...]
    max_length: int = 32

    @classmethod
    def from_captions(cls, captions, max_length: int = 32, min_count: int = 1) -> "Tokenizer":
        counts: dict[str, int] = {}
        for caption in captions:
            for word in words(caption):
                counts[word] = counts.get(word, 0) + 1
        kept = sorted(w for w, c in counts.items() if c >= min_count)
        return cls(vocabulary=SPECIAL_TOKENS + tuple(kept), max_length=max_length)

    def __post_init__(self):
        if tuple(self.vocabulary[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary starts with the special tokens {SPECIAL_TOKENS}; build one with "
                             "Tokenizer.from_captions")
        object.__setattr__(self, "_ids", {w: i for i, w in enumerate(self.vocabulary)})

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def encode(self, caption: str, truncate: bool = False) -> np.ndarray:
        """Caption -> (max_length,) int32 ids: BOS, the words, then PAD.

        An empty caption is an error (to ask for an unconditional image, use
        `empty()` or a guidance scale of 0). A caption longer than the model
        reads is an error too, unless `truncate` (as for training captions),
        because silently dropping words changes what was asked for.
        """
        tokens = words(caption)
        if not tokens:
            raise CaptionError(
                f"caption {caption!r} has no words; write a sentence such as "
                "'a red flower with a yellow centre'"
            )
        limit = self.max_length - 1
        if len(tokens) > limit:
            if not truncate:
                raise CaptionError(
                    f"caption has {len(tokens)} words but this model reads at most {limit}; "
                    f"shorten it: {caption!r}"
                )
            tokens = tokens[:limit]
        ids = np.full(self.max_length, PAD, np.int32)
        ids[0] = BOS
        ids[1 : 1 + len(tokens)] = [self._ids.get(w, UNK) for w in tokens]
        return ids

    def encode_batch(self, captions, truncate: bool = False) -> np.ndarray:
        return np.stack([self.encode(c, truncate) for c in captions])

    def empty(self, batch_size: int = 1) -> np.ndarray:
        """The "no caption" ids used for caption dropout and unconditional samples."""
        ids = np.full((batch_size, self.max_length), PAD, np.int32)
        ids[:, 0] = BOS
        return ids

    def decode(self, ids) -> str:
        return " ".join(self.vocabulary[i] for i in np.asarray(ids) if i not in (PAD, BOS))

    @property
    def mask_id(self) -> int:
        """The id of "<mask>", for pretraining an encoder to fill in hidden words."""
        return MASK

    def unknown_words(self, caption: str) -> list[str]:
        return [w for w in words(caption) if w not in self._ids]

    def to_dict(self) -> dict:
        return {"vocabulary": list(self.vocabulary), "max_length": self.max_length}

    @classmethod
    def from_dict(cls, d: dict) -> "Tokenizer":
        return cls(vocabulary=tuple(d["vocabulary"]), max_length=int(d["max_length"]))


# --- The text encoder --------------------------------------------------------------


class TransformerBlock(nnx.Module):
    """Pre-norm transformer layer: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attention = MultiHeadAttention(dim, dim, heads, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.mlp_in = nnx.Linear(dim, 4 * dim, rngs=rngs)
        self.mlp_out = nnx.Linear(4 * dim, dim, rngs=rngs)

    def __call__(self, x, mask):
        h = self.norm1(x)
        x = x + self.attention(h, h, mask)
        return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.norm2(x))))


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
    vocab_size: int
    max_length: int = 32
    dim: int = 128
    depth: int = 2  # layers
    heads: int = 4


class TextEncoder(nnx.Module):
    """Token ids (B, L) -> token embeddings (B, L, D), a padding mask, and a pooled vector.

    The pooled vector (the output at BOS, which attends to the whole caption)
    is a summary the U-Net adds to its noise-level embedding, as Imagen does
    with its pooled text embedding (Saharia et al. 2022, sec. 2.2).
    """

    def __init__(self, config: TextEncoderConfig, *, rngs: nnx.Rngs):
        self.config = config
        embedding_init = nnx.initializers.normal(0.02)
        self.token_embedding = nnx.Embed(
            config.vocab_size, config.dim, embedding_init=embedding_init, rngs=rngs
        )
        self.position_embedding = nnx.Param(
            embedding_init(rngs.params(), (config.max_length, config.dim))
        )
        self.blocks = nnx.List([TransformerBlock(config.dim, config.heads, rngs=rngs) for _ in range(config.depth)])
        self.norm = nnx.LayerNorm(config.dim, rngs=rngs)

    def __call__(self, token_ids):
        mask = token_ids != PAD  # (B, L); BOS is never padding
        x = self.token_embedding(token_ids) + self.position_embedding[None, : token_ids.shape[1]]
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)  # (B, L, D)
        return x, mask, x[:, 0]
