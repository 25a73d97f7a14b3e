"""Pretraining a text encoder on text alone: fill in the hidden words (Devlin et al. 2019).

Imagen's finding (Saharia et al. 2022, sec. 2.1 and 4.4): a language model
trained on text alone and kept frozen conditions a diffusion model better than
an encoder trained on image–caption pairs — text is plentiful where captioned
images are not. Here in miniature: the CUB captions cover 11,788 birds while
images exist for a few hundred of them; an encoder that has read every
caption knows words the image captions barely use.

The objective is BERT's masked language model: hide some words of a sentence
and predict them from the rest. To fill "a [MASK] bird with black wings" the
encoder must relate each word to the others, which is what the denoiser later
needs from its vectors. The encoder is any of `minidiff.text_encoders`; a bag
of words, which sees no other words, can only learn how common each word is.
"""

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from minidiff.captions import BOS, MASK, PAD, SPECIAL_TOKENS, TextEncoderConfig, Tokenizer
from minidiff.loop import Task, TrainConfig, batch_indices, new_run, train
from minidiff.text_encoders import TEXT_ENCODERS

# Devlin et al. 2019, sec. 3.1: 15 % of the words are chosen to be predicted; of those, 80 % are
# replaced by <mask>, 10 % by a random word and 10 % left as they are, so that the encoder cannot
# learn that only <mask> positions matter (fine-tuning text has no <mask>).
CHOSEN_RATE = 0.15
REPLACED_BY_MASK, REPLACED_BY_RANDOM = 0.8, 0.1


def read_corpus(*paths) -> list[str]:
    """Sentences, one per line, from text files or folders of them (every *.txt below, in sorted order)."""
    sentences = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(path.rglob("*.txt"))
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(f"no text corpus at {path}: give a text file (one sentence per line) or a "
                                    "folder of them, e.g. ../shared/data/cub_200_2011_captions/text")
        for file in files:
            sentences += [line.strip() for line in file.read_text(encoding="utf-8", errors="replace").splitlines()
                          if line.strip()]
    if not sentences:
        raise ValueError(f"the corpus {', '.join(map(str, paths))} holds no sentences (no .txt files, or only "
                         "empty lines)")
    return sentences


def mask_words(key, token_ids, vocab_size: int, mask_id: int = MASK):
    """BERT's corruption of token ids (B, L): returns the corrupted ids and which positions to predict (B, L).

    Only words are chosen, never padding or BOS."""
    choose_key, how_key, word_key = jax.random.split(key, 3)
    is_word = (token_ids != PAD) & (token_ids != BOS)
    chosen = is_word & (jax.random.uniform(choose_key, token_ids.shape) < CHOSEN_RATE)
    how = jax.random.uniform(how_key, token_ids.shape)
    random_words = jax.random.randint(word_key, token_ids.shape, len(SPECIAL_TOKENS), vocab_size)
    corrupted = jnp.where(chosen & (how < REPLACED_BY_MASK), mask_id, token_ids)
    corrupted = jnp.where(chosen & (how >= REPLACED_BY_MASK) & (how < REPLACED_BY_MASK + REPLACED_BY_RANDOM),
                          random_words, corrupted)
    return corrupted, chosen


class MaskedLanguageModel(nnx.Module):
    """An encoder of `kind` (one of TEXT_ENCODERS) with BERT's prediction head: token vectors -> logits over
    the vocabulary (B, L, V).

    The head's output layer is the encoder's own word embedding, transposed (tied weights, as BERT's),
    so the pretraining shapes the very vectors the denoiser will read."""

    def __init__(self, config: TextEncoderConfig, kind: str, *, rngs: nnx.Rngs):
        self.encoder = TEXT_ENCODERS[kind](config, rngs=rngs)
        self.transform = nnx.Linear(config.dim, config.dim, rngs=rngs)
        self.norm = nnx.LayerNorm(config.dim, rngs=rngs)
        self.output_bias = nnx.Param(jnp.zeros((config.vocab_size,)))

    def __call__(self, token_ids):
        tokens, _, _ = self.encoder(token_ids)  # (B, L, D)
        h = self.norm(jax.nn.gelu(self.transform(tokens)))
        return self.encoder.token_embedding.attend(h) + self.output_bias  # (B, L, V)


def masked_word_loss(model: MaskedLanguageModel, token_ids, key):
    """Cross-entropy on the chosen positions only; also returns the fraction of them predicted right."""
    corrupted, chosen = mask_words(key, token_ids, model.encoder.config.vocab_size)
    logits = model(corrupted).astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, token_ids)
    count = jnp.maximum(jnp.sum(chosen), 1)
    accuracy = jnp.sum((jnp.argmax(logits, -1) == token_ids) & chosen) / count
    return jnp.sum(losses * chosen) / count, accuracy


def _training_loss(model, batch, constants, key, dtype):
    (token_ids,) = batch
    loss, accuracy = masked_word_loss(model, token_ids, key)
    return loss, {"masked_words_right": accuracy}


class MaskedWordTraining(Task):
    """Pretraining's part of the run (`minidiff.loop`): batches of sentences, and the loss above."""

    kind = "masked language model run"
    description = "pretraining the text encoder"
    unit = "sentences"
    loss = staticmethod(_training_loss)

    def __init__(self, token_ids: np.ndarray, config: TrainConfig):
        self.token_ids, self.config = token_ids, config

    def batch(self, step: int) -> tuple:
        return (self.token_ids[batch_indices(len(self.token_ids), self.config.batch_size, self.config.seed, step)],)


@nnx.jit
def _evaluate(model, token_ids, key):
    return masked_word_loss(model, token_ids, key)


@dataclasses.dataclass
class Pretraining:
    """What `pretrain` returns: the encoder, its tokenizer, and how the run went."""

    encoder: nnx.Module
    tokenizer: Tokenizer
    losses: list  # (step, loss)
    validation_accuracy: float  # the fraction of hidden words of held-out sentences predicted exactly
    sentences: int
    seconds: float


def pretrain(sentences, config: TextEncoderConfig, kind: str, tokenizer: Tokenizer, train_config: TrainConfig,
             validation_fraction: float = 0.02, progress: bool = True) -> Pretraining:
    """Train an encoder of `kind` and `config` to fill in hidden words of `sentences` (a list of str), with
    the loop's settings `train_config` (no moving average is kept: the encoder is used as trained)."""
    if config.vocab_size != tokenizer.vocab_size or config.max_length != tokenizer.max_length:
        raise ValueError(f"the encoder reads {config.vocab_size} words and {config.max_length} tokens; the tokenizer "
                         f"has {tokenizer.vocab_size} and {tokenizer.max_length}")
    if train_config.ema_decay:
        raise ValueError("pretraining keeps no moving average of the encoder: give ema_decay=0")
    seed = train_config.seed
    ids = tokenizer.encode_batch(sentences, truncate=True)[np.random.default_rng(seed).permutation(len(sentences))]
    held_out = max(1, int(len(ids) * validation_fraction)) if len(ids) > 1 else 0
    validation, train_ids = ids[:held_out], ids[held_out:]
    start = time.perf_counter()
    run = new_run(MaskedLanguageModel(config, kind, rngs=nnx.Rngs(seed)), train_config)
    run = train(run, MaskedWordTraining(train_ids, train_config), progress=progress)
    validation_accuracy = float("nan")
    if held_out:
        _, accuracy = _evaluate(run.model, jnp.asarray(validation), jax.random.key(seed + 1))
        validation_accuracy = float(accuracy)
    return Pretraining(run.model.encoder, tokenizer, run.losses, validation_accuracy, len(sentences),
                       time.perf_counter() - start)
