"""A frozen text encoder: pretrained, put into a text-to-image model, and never updated.

Imagen trains its denoiser on the outputs of a T5 encoder that stays as it was
pretrained (Saharia et al. 2022, sec. 2.1). Three things follow, each a
function here:

- the encoder's file: what `minidiff pretrain-text` writes (`save_text_encoder`)
  and a recipe's `model.text_encoder_file` reads into a new model
  (`with_pretrained_text_encoder`), with the tokenizer it was trained with;
- the optimizer and the EMA leave it alone (`trainable`): the loss's gradient
  is not even computed for it, and its weights stay bit for bit as loaded;
- since its outputs never change, each training caption is encoded once, not
  at every step it is drawn (`embed_captions`): a frozen encoder costs its
  forward pass per caption, not per step — the reason large frozen encoders
  are affordable at all.
"""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from minidiff.captions import TextEncoderConfig, Tokenizer
from minidiff.machinery.checkpoints import Checkpoint, CheckpointError, save_checkpoint

KIND = "text encoder"


def trainable(config) -> nnx.filterlib.Filter:
    """The parameters a run updates: all of them, or, under a frozen text encoder, all of the rest.
    `config` is the model's `ModelConfig`."""
    if config.text_encoder_frozen:
        return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("text_encoder")))
    return nnx.Param


def save_text_encoder(path, encoder: nnx.Module, kind: str, tokenizer: Tokenizer, **about) -> Path:
    """One .npz file (atomic, no pickle): the encoder's arrays, its kind (one of TEXT_ENCODERS) and config,
    its tokenizer and `about` (how it was trained)."""
    header = {"kind": KIND, "text_encoder": kind, "text_config": dataclasses.asdict(encoder.config),
              "tokenizer": tokenizer.to_dict(), **about}
    return save_checkpoint(path, header, text_encoder=encoder)


@dataclasses.dataclass(frozen=True)
class TextEncoderFile:
    """What a pretrained encoder's file holds: its kind, its config, its tokenizer, and the file for its weights."""

    kind: str
    config: TextEncoderConfig
    tokenizer: Tokenizer
    checkpoint: Checkpoint


def read_text_encoder_file(path) -> TextEncoderFile:
    if not Path(path).is_file():
        raise CheckpointError(f"no text encoder file at {path}; make one with minidiff pretrain-text --corpus ... "
                              f"--out {Path(path).parent}")
    checkpoint = Checkpoint(path)
    (kind,) = checkpoint.fields("kind", kind=KIND)
    if kind != KIND:
        raise CheckpointError(f"{path} is a {kind} file, not a text encoder's: make one with minidiff pretrain-text")
    encoder_kind, text_config, tokenizer = checkpoint.fields("text_encoder", "text_config", "tokenizer", kind=KIND)
    return TextEncoderFile(encoder_kind, TextEncoderConfig(**text_config), Tokenizer.from_dict(tokenizer), checkpoint)


def with_pretrained_text_encoder(model, checkpoint: Checkpoint) -> None:
    """Load a pretrained encoder's weights into `model.text_encoder` (in place)."""
    checkpoint.restore("text_encoder", model.text_encoder)


@nnx.jit
def _encode(encoder, token_ids):
    return encoder(token_ids)


def _embed(encoder: nnx.Module, token_ids: np.ndarray, batch_size: int):
    rows = token_ids.reshape(-1, token_ids.shape[-1])
    parts = [jax.device_get(_encode(encoder, jnp.asarray(rows[i: i + batch_size])))
             for i in range(0, len(rows), batch_size)]
    lead = token_ids.shape[:-1]
    return tuple(np.concatenate([p[k] for p in parts]).reshape(*lead, *parts[0][k].shape[1:]) for k in range(3))


def embed_captions(encoder: nnx.Module, token_ids: np.ndarray, empty_ids: np.ndarray, batch_size: int = 256):
    """The encoder's output for every row of `token_ids` (..., L), computed once and kept on the host
    (tokens (..., L, D) float32, mask (..., L) bool, pooled (..., D) float32), and for the empty caption
    `empty_ids` (1, L), on the device ((L, D), (L,), (D,)), as caption dropout swaps it in."""
    empty = _embed(encoder, empty_ids, batch_size)
    return _embed(encoder, token_ids, batch_size), tuple(jnp.asarray(part[0]) for part in empty)
