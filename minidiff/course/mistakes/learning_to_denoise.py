"""Chapter 02, Learning to denoise: the common mistakes of its exercises, each written out as the
wrong answer it gives (see `minidiff.course.mistakes`)."""

import jax.numpy as jnp

from minidiff.corruption import per_image

V_TARGET = {
    "x0 and eps are swapped: v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0":
        lambda x0, eps, alpha_bar: jnp.sqrt(per_image(alpha_bar)) * x0 - jnp.sqrt(1 - per_image(alpha_bar)) * eps,
    "the square roots are missing":
        lambda x0, eps, alpha_bar: per_image(alpha_bar) * eps - (1 - per_image(alpha_bar)) * x0,
}

X0_FROM_EPS = {
    "divided by alpha_bar where its square root belongs":
        lambda xt, eps, alpha_bar: (xt - jnp.sqrt(1 - per_image(alpha_bar)) * eps) / per_image(alpha_bar),
    "the noise is subtracted without its scale sqrt(1 - alpha_bar)":
        lambda xt, eps, alpha_bar: (xt - eps) / jnp.sqrt(per_image(alpha_bar)),
    "not divided by sqrt(alpha_bar): x_t - sqrt(1 - alpha_bar) eps is sqrt(alpha_bar) x0, not x0":
        lambda xt, eps, alpha_bar: xt - jnp.sqrt(1 - per_image(alpha_bar)) * eps,
}
