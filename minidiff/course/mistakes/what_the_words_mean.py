"""Chapter 05, What the words mean: the common mistakes of its exercises, each written out as the
wrong answer it gives (see `minidiff.course.mistakes`)."""

import jax
import jax.numpy as jnp
import numpy as np

from minidiff.captions import BOS, PAD
from minidiff.text_encoders.bag_of_words import masked_mean
from minidiff.text_encoders.masked_language_model import CHOSEN_RATE, REPLACED_BY_MASK, REPLACED_BY_RANDOM

MASKED_MEAN = {
    "the padding is averaged in: leave out the positions where the mask is False":
        lambda x, mask: jnp.mean(x, axis=1),
    "divided by the full length L: divide by the number of the caption's tokens, the mask's sum":
        lambda x, mask: masked_mean(x, mask) * jnp.sum(mask, axis=1, keepdims=True) / x.shape[1],
    "BOS is left out: the mean is over every token the mask keeps, BOS included":
        lambda x, mask: masked_mean(x, mask.at[:, 0].set(False)),
}


def _mask_words(key, token_ids, vocab_size, mask_id, words_only=True, below=True, keep_some=True, first_word=4):
    choose_key, how_key, word_key = jax.random.split(key, 3)
    draws = jax.random.uniform(choose_key, token_ids.shape)
    chosen = draws < CHOSEN_RATE if below else draws >= CHOSEN_RATE
    if words_only:
        chosen = chosen & (token_ids != PAD) & (token_ids != BOS)
    how = jax.random.uniform(how_key, token_ids.shape) if keep_some else jnp.zeros(token_ids.shape)  # 0: <mask>
    random_words = jax.random.randint(word_key, token_ids.shape, first_word, vocab_size)
    corrupted = jnp.where(chosen & (how < REPLACED_BY_MASK), mask_id, token_ids)
    random = chosen & (how >= REPLACED_BY_MASK) & (how < REPLACED_BY_MASK + REPLACED_BY_RANDOM)
    return jnp.where(random, random_words, corrupted), chosen


MASK_WORDS = {
    "padding and BOS are chosen too: only words are hidden and predicted":
        lambda key, token_ids, vocab_size, mask_id: _mask_words(key, token_ids, vocab_size, mask_id, words_only=False),
    "85 % of the words are chosen: a word is chosen where its draw is below 0.15":
        lambda key, token_ids, vocab_size, mask_id: _mask_words(key, token_ids, vocab_size, mask_id, below=False),
    "every chosen word becomes <mask>: 10 % of them become a random word, and 10 % stay as they are":
        lambda key, token_ids, vocab_size, mask_id: _mask_words(key, token_ids, vocab_size, mask_id, keep_some=False),
    "the random words are drawn from id 0: ids 0 to 3 are PAD, BOS, <unk> and <mask>, no words; draw from 4":
        lambda key, token_ids, vocab_size, mask_id: _mask_words(key, token_ids, vocab_size, mask_id, first_word=0),
}


def _colours_score(read, pairs, own_if=all, swapped_if=all, also_swapped=False, reverse=False):
    got = [(r["body_colour"], r["wing_colour"]) for r in read]
    own = [own_if((g[0] == a[0], g[1] == a[1])) or (also_swapped and g == a[::-1]) for g, a in zip(got, pairs)]
    swapped = [swapped_if((g[0] == a[1], g[1] == a[0])) for g, a in zip(got, pairs)]
    return (float(np.mean(swapped)), float(np.mean(own))) if reverse else (float(np.mean(own)), float(np.mean(swapped)))


SWAPPED_COLOURS_SCORE = {
    "a bird with one part right counts as right: both parts must have their own colours":
        lambda read, pairs: _colours_score(read, pairs, own_if=any),
    "a swapped bird counts as right: the body must have the first colour word, the wings the second":
        lambda read, pairs: _colours_score(read, pairs, also_swapped=True),
    "a bird counts as swapped when one part has the other's colour: both colours must have traded places":
        lambda read, pairs: _colours_score(read, pairs, swapped_if=any),
    "the two fractions are the wrong way round: first the birds with their own colours, then the swapped ones":
        lambda read, pairs: _colours_score(read, pairs, reverse=True),
}
