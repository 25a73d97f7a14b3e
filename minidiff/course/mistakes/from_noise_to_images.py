"""Chapter 03, From noise to images: the common mistakes of its exercises, each written out as the
wrong answer it gives (see `minidiff.course.mistakes`)."""

import jax.numpy as jnp
import numpy as np

from minidiff.corruption import per_image

DDIM_STEP = {
    "the weights of alpha_bar_t, where the step starts: x_s is made with alpha_bar_s, where it goes":
        lambda xt, x0, eps, alpha_bar_t, alpha_bar_s: jnp.sqrt(alpha_bar_t) * x0 + jnp.sqrt(1 - alpha_bar_t) * eps,
    "the square roots are missing":
        lambda xt, x0, eps, alpha_bar_t, alpha_bar_s: alpha_bar_s * x0 + (1 - alpha_bar_s) * eps,
    "x0 and eps are swapped: sqrt(alpha_bar_s) scales the clean image":
        lambda xt, x0, eps, alpha_bar_t, alpha_bar_s: jnp.sqrt(alpha_bar_s) * eps + jnp.sqrt(1 - alpha_bar_s) * x0,
}

EPS_FROM_X0 = {
    "divided by 1 - alpha_bar where its square root belongs":
        lambda xt, x0, alpha_bar: (xt - jnp.sqrt(per_image(alpha_bar)) * x0) / (1 - per_image(alpha_bar)),
    "x0 is subtracted without its scale sqrt(alpha_bar)":
        lambda xt, x0, alpha_bar: (xt - x0) / jnp.sqrt(1 - per_image(alpha_bar)),
    "alpha_bar and 1 - alpha_bar are swapped":
        lambda xt, x0, alpha_bar: (xt - jnp.sqrt(1 - per_image(alpha_bar)) * x0) / jnp.sqrt(per_image(alpha_bar)),
}

TIMESTEPS = {
    "counting up: sampling starts from the noisiest step, T - 1, and walks down to 0":
        lambda num_train_steps, num_steps: np.round(np.linspace(0, num_train_steps - 1, num_steps)).astype(np.int32),
    "from T down to 1: the steps are numbered 0 to T - 1":
        lambda num_train_steps, num_steps: np.round(np.linspace(num_train_steps, 1, num_steps)).astype(np.int32),
    "truncated, not rounded: astype(int) cuts 713.6 to 713, where the nearest step is 714":
        lambda num_train_steps, num_steps: np.linspace(num_train_steps - 1, 0, num_steps).astype(np.int32),
}
