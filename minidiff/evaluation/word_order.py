"""The swapped-colours test: does a model know which part each colour word belongs to?

"a red bird with black wings" and "a black bird with red wings" hold the same
words; only their order says which colour is the body's and which the wings'.
For every ordered pair of two different bird colours, the test draws birds for
"a {body} bird with {wings} wings" and reads both parts' colours off the pixels
(`pixel_judge.read_attributes`): a bird passes when each part has its own
colour. An encoder blind to word order (`minidiff.text_encoders.bag_of_words`)
can at best paint both colours and guess which goes where: about half pass.
"""

import itertools

import numpy as np

from minidiff.captions import UNK
from minidiff.corruption import to_uint8
from minidiff.datasets.toy import BIRD_ATTRIBUTES
from minidiff.evaluation.pixel_judge import read_attributes


def swapped_colour_pairs() -> list[tuple[str, str]]:
    """(body, wings) for every ordered pair of two different bird colours: each pair's swap is in the list too."""
    return list(itertools.permutations(BIRD_ATTRIBUTES["body_colour"], 2))


def swapped_colours_score(read, pairs) -> tuple[float, float]:
    """From the colours read off each bird (dicts with "body_colour" and "wing_colour") and the (body, wings)
    each was asked for: the fraction with each part in its own colour, and with the two the other way round."""
    got = [(r["body_colour"], r["wing_colour"]) for r in read]
    own = sum(g == tuple(asked) for g, asked in zip(got, pairs))
    swapped = sum(g == tuple(asked)[::-1] for g, asked in zip(got, pairs))
    return own / len(pairs), swapped / len(pairs)


def word_influence(encoder, token_ids, length: int) -> np.ndarray:
    """How far each token's output vector moves when one word of a caption is replaced by <unk>: row j-1 for
    word j (1 <= j < length), column k for token k (< length); token_ids (L,) one caption; `encoder` is called
    on a numpy batch of ids (B, L) and returns (tokens, mask, pooled) as an encoder does. A bag of words
    moves only the replaced word's own vector (a diagonal); an order-aware encoder moves the others too."""
    variants = np.repeat(np.asarray(token_ids)[None, :], length, axis=0)
    variants[np.arange(1, length), np.arange(1, length)] = UNK  # row 0 stays the caption itself
    tokens = np.asarray(encoder(variants)[0])  # (length, L, D)
    return np.linalg.norm(tokens[1:, :length] - tokens[0, :length], axis=-1)  # (length - 1, length)


def swapped_colours_test(generator, per_pair: int = 2, seed: int = 0, **sampling) -> dict[str, float]:
    """Draw `per_pair` birds per (body, wings) pair with a `minidiff.generator.Generator` (`sampling`: its
    settings). Returns the fraction of birds with each part in its own colour ("own colours"), with the two
    colours the other way round ("swapped"), and the number of birds drawn."""
    pairs = [pair for pair in swapped_colour_pairs() for _ in range(per_pair)]
    captions = [f"a {body} bird with {wings} wings" for body, wings in pairs]
    images = to_uint8(generator.sample(captions, seed=seed, **sampling))
    own, swapped = swapped_colours_score([read_attributes(image, "birds") for image in np.asarray(images)], pairs)
    return {"own colours": own, "swapped": swapped, "birds": len(pairs)}
