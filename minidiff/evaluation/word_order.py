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

from minidiff.corruption import to_uint8
from minidiff.datasets.toy import BIRD_ATTRIBUTES
from minidiff.evaluation.pixel_judge import read_attributes


def swapped_colour_pairs() -> list[tuple[str, str]]:
    """(body, wings) for every ordered pair of two different bird colours: each pair's swap is in the list too."""
    return list(itertools.permutations(BIRD_ATTRIBUTES["body_colour"], 2))


def swapped_colours_test(generator, per_pair: int = 2, seed: int = 0, **sampling) -> dict[str, float]:
    """Draw `per_pair` birds per (body, wings) pair with a `minidiff.generator.Generator` (`sampling`: its
    settings). Returns the fraction of birds with each part in its own colour ("own colours"), with the two
    colours the other way round ("swapped"), and the number of birds drawn."""
    pairs = [pair for pair in swapped_colour_pairs() for _ in range(per_pair)]
    captions = [f"a {body} bird with {wings} wings" for body, wings in pairs]
    images = to_uint8(generator.sample(captions, seed=seed, **sampling))
    read = [read_attributes(image, "birds") for image in np.asarray(images)]
    own = [r["body_colour"] == body and r["wing_colour"] == wings for r, (body, wings) in zip(read, pairs)]
    swapped = [r["body_colour"] == wings and r["wing_colour"] == body for r, (body, wings) in zip(read, pairs)]
    return {"own colours": float(np.mean(own)), "swapped": float(np.mean(swapped)), "birds": len(pairs)}
