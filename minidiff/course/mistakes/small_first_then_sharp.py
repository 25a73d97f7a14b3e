"""Chapter 08, Small first, then sharp: the common mistakes of its exercises, each written out as the
wrong answer it gives (see `minidiff.course.mistakes`)."""

import jax.numpy as jnp
import numpy as np

from minidiff.corruption import cosine_alpha_bar

def _augment_wrong(images, level, eps, square_roots: bool = True, level_is_alpha_bar: bool = False):
    alpha_bar = (level if level_is_alpha_bar else cosine_alpha_bar(level))[:, None, None, None]
    if square_roots:
        return jnp.sqrt(alpha_bar) * images + jnp.sqrt(1 - alpha_bar) * eps
    return alpha_bar * images + (1 - alpha_bar) * eps


AUGMENT = {
    "the square roots are missing": lambda images, level, eps: _augment_wrong(images, level, eps, square_roots=False),
    "the level used as alpha_bar: the level is a time, alpha_bar = cosine_alpha_bar(level)":
        lambda images, level, eps: _augment_wrong(images, level, eps, level_is_alpha_bar=True),
}


def _threshold_wrong(x0_pred, divide: bool = True, floor: bool = True, per_image_s: bool = True):
    values = jnp.abs(x0_pred).reshape(len(x0_pred), -1) if per_image_s else jnp.abs(x0_pred).reshape(1, -1)
    s = jnp.percentile(values, 99.5, axis=1)
    s = (jnp.maximum(s, 1.0) if floor else s)[:, None, None, None]
    clipped = jnp.clip(x0_pred, -s, s)
    return clipped / s if divide else clipped


DYNAMIC_THRESHOLD = {
    "clipped to [-s, s] but not divided by s: the image leaves [-1, 1]":
        lambda x0_pred: _threshold_wrong(x0_pred, divide=False),
    "s is not floored at 1: an image already inside [-1, 1] gets stretched":
        lambda x0_pred: _threshold_wrong(x0_pred, floor=False),
    "one s for the whole batch: each image gets its own":
        lambda x0_pred: _threshold_wrong(x0_pred, per_image_s=False),
}


def _squared_errors(images, reference):
    return np.mean((np.asarray(images, np.float64) - reference) ** 2, axis=(1, 2, 3))


PSNR = {
    "the PSNR of the batch's mean squared error: take each image's PSNR, then their mean":
        lambda images, reference: float(10 * np.log10(255.0**2 / _squared_errors(images, reference).mean())),
    "255 is not squared: PSNR = 10 log10(255^2 / MSE)":
        lambda images, reference: float(np.mean(10 * np.log10(255.0 / _squared_errors(images, reference)))),
}
