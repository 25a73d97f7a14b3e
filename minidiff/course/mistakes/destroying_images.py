"""Chapter 01, Destroying images: the common mistakes of its exercises, each written out as the
wrong answer it gives (see `minidiff.course.mistakes`)."""

import jax.numpy as jnp

from minidiff.corruption import per_image

Q_SAMPLE = {
    "the square roots are missing: x0 is scaled by sqrt(alpha_bar), eps by sqrt(1 - alpha_bar)":
        lambda x0, alpha_bar, eps: per_image(alpha_bar) * x0 + (1 - per_image(alpha_bar)) * eps,
    "alpha_bar and 1 - alpha_bar are swapped: alpha_bar is the signal left, so it scales x0":
        lambda x0, alpha_bar, eps: jnp.sqrt(1 - per_image(alpha_bar)) * x0 + jnp.sqrt(per_image(alpha_bar)) * eps,
}

SNR_CROSSING = {
    "one step early: that is the last step with SNR >= 1, not the first with SNR < 1":
        lambda schedule: jnp.argmax(schedule.alpha_bar < 0.5) - 1,
    "step 0, where SNR is still above 1: the SNR starts high and falls; find where SNR < 1 first holds "
    "(and mind that SNR is alpha_bar / (1 - alpha_bar), signal over noise)":
        lambda schedule: jnp.argmax((1 - schedule.alpha_bar) / schedule.alpha_bar < 1),
}

ALPHA_BAR = {
    "a beta where 1 - beta belongs: alpha_bar is the product of 1 - beta_s, the signal each step keeps":
        lambda beta: jnp.cumprod(beta),
    "a sum where the product belongs: each step scales what the steps before it left":
        lambda beta: 1 - jnp.cumsum(beta),
    "one minus the product of the betas: take the product of (1 - beta_s)":
        lambda beta: 1 - jnp.cumprod(beta),
}
