"""Chapter 06, Flowers and birds: the common mistakes of its exercises, each written out as the
wrong answer it gives (see `minidiff.course.mistakes`)."""

import numpy as np


def _bird_crop(width, height, box, longer: bool = True, enlarge: float = 1.5, inside: bool = True):
    x, y, w, h = box
    side = int(round(min((max(w, h) if longer else min(w, h)) * enlarge, width, height)))
    left, top = x + w / 2 - side / 2, y + h / 2 - side / 2
    if inside:
        left, top = np.clip(left, 0, width - side), np.clip(top, 0, height - side)
    left, top = int(round(left)), int(round(top))
    return left, top, left + side, top + side


SQUARE_CROP = {
    "the box's shorter side where its longer side belongs: the square must hold the whole bird":
        lambda width, height, box: _bird_crop(width, height, box, longer=False),
    "the square is not shifted to stay inside the photo":
        lambda width, height, box: _bird_crop(width, height, box, inside=False),
    "the box is not enlarged by 1.5: the bird then fills the crop to its edges":
        lambda width, height, box: _bird_crop(width, height, box, enlarge=1.0),
}

MIRROR = {
    "upside down: axis 1 holds the rows; left to right is axis 2, the columns":
        lambda images: images[:, ::-1],
    "the colour channels are reversed (RGB became BGR), not the columns":
        lambda images: images[..., ::-1],
    "the order of the images in the batch is reversed, not each image":
        lambda images: images[::-1],
}

TRUNCATED_FRACTION = {
    "the BOS token is forgotten: a caption takes one token more than its words":
        lambda captions, max_length: np.mean([len(c.split()) > max_length for c in captions]),
    "a caption of exactly max_length tokens fits: only longer ones are cut":
        lambda captions, max_length: np.mean([len(c.split()) + 1 >= max_length for c in captions]),
}
