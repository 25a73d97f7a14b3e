"""Chapter 10, Transformers and flows: the common mistakes of its exercises, each written out as the
wrong answer it gives (see `minidiff.course.mistakes`)."""

import jax

from minidiff.corruption import per_image

INTERPOLATE = {
    "t and 1 - t are swapped: at t = 0 the path is at the data, at t = 1 at the noise":
        lambda x0, eps, t: per_image(t) * x0 + (1 - per_image(t)) * eps,
}

X0_AND_EPS = {
    "the signs are flipped: v = eps - x0 points from the data to the noise, so x0 lies behind x_t, x_t - sigma v":
        lambda velocity, xt, alpha, sigma: (xt + per_image(sigma) * velocity, xt - per_image(alpha) * velocity),
    "alpha and sigma are swapped: x0 lies sigma v (t v) back from x_t, and eps alpha v ((1 - t) v) ahead of it":
        lambda velocity, xt, alpha, sigma: (xt - per_image(alpha) * velocity, xt + per_image(sigma) * velocity),
    "alpha and sigma multiply along the last axis, the channels: give them one value per image, (B, 1, 1, 1)":
        lambda velocity, xt, alpha, sigma: (xt - sigma * velocity, xt + alpha * velocity),
}

LOGIT_NORMAL_TIMES = {
    "the sigmoid is missing: normal draws are not times in (0, 1)":
        lambda key, batch: jax.random.normal(key, (batch,)),
    "uniform times: logit-normal times crowd the middle, where the flow is hardest to learn":
        lambda key, batch: jax.random.uniform(key, (batch,)),
}
