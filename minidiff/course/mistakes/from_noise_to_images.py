"""Chapter 03, From noise to images: the common mistakes of its exercises, each written out as the
wrong answer it gives (see `minidiff.course.mistakes`). A noise level is given as alpha and sigma:
x_t = alpha_t x0 + sigma_t eps."""

import numpy as np

from minidiff.corruption import per_image

DDIM_STEP = {
    "the weights of t, where the step starts: x_s is made with alpha_s and sigma_s, the level it lands on":
        lambda x0, eps, alpha_t, sigma_t, alpha_s, sigma_s: alpha_t * x0 + sigma_t * eps,
    "x0 and eps are swapped: alpha_s, the signal's scale, multiplies the predicted clean image":
        lambda x0, eps, alpha_t, sigma_t, alpha_s, sigma_s: alpha_s * eps + sigma_s * x0,
    "the noise keeps its scale at t: at level s the predicted noise is scaled by sigma_s":
        lambda x0, eps, alpha_t, sigma_t, alpha_s, sigma_s: alpha_s * x0 + sigma_t * eps,
}

EPS_FROM_X0 = {
    "divided by sigma squared (1 - alpha_bar): divide by sigma itself, the scale of eps in x_t":
        lambda xt, x0, alpha, sigma: (xt - per_image(alpha) * x0) / per_image(sigma) ** 2,
    "x0 is subtracted without its scale alpha":
        lambda xt, x0, alpha, sigma: (xt - x0) / per_image(sigma),
    "alpha and sigma are swapped: x_t = alpha x0 + sigma eps":
        lambda xt, x0, alpha, sigma: (xt - per_image(sigma) * x0) / per_image(alpha),
}

TIME_GRID = {
    "counting up: a sampler starts from pure noise, t = 1, and walks down towards the image":
        lambda sampling_steps: np.linspace(0, 1, sampling_steps + 1)[1:],
    "t = 0 is among the levels: that makes N + 1 of them, and at t = 0 there is no noise left to remove":
        lambda sampling_steps: np.linspace(1, 0, sampling_steps + 1),
    "np.linspace(1, 0, N) spaces the levels 1 / (N - 1) apart and ends at t = 0: the N uniform levels are "
    "1 / N apart, and the last is one step above t = 0":
        lambda sampling_steps: np.linspace(1, 0, sampling_steps),
    "the first level is one step below pure noise: the sampler starts at t = 1, where its noise is all there is, "
    "and never visits t = 0":
        lambda sampling_steps: np.linspace(1, 0, sampling_steps + 1)[1:],
}
