"""Chapter 02, Learning to denoise: the common mistakes of its exercises, each written out as the
wrong answer it gives (see `minidiff.course.mistakes`). The noise level is given as alpha and sigma,
one per image: x_t = alpha x0 + sigma eps, with alpha = sqrt(alpha_bar) and sigma = sqrt(1 - alpha_bar)."""

from minidiff.corruption import per_image

V_TARGET = {
    "x0 and eps are swapped: v = alpha eps - sigma x0":
        lambda x0, eps, alpha, sigma: per_image(alpha) * x0 - per_image(sigma) * eps,
    "alpha and sigma are swapped: alpha, the signal's scale, multiplies eps in v, and sigma multiplies x0":
        lambda x0, eps, alpha, sigma: per_image(sigma) * eps - per_image(alpha) * x0,
    "alpha and sigma are squared: they are already the square roots of alpha_bar and 1 - alpha_bar":
        lambda x0, eps, alpha, sigma: per_image(alpha) ** 2 * eps - per_image(sigma) ** 2 * x0,
}

X0_FROM_EPS = {
    "divided by alpha squared (alpha_bar): divide by alpha itself, the scale of x0 in x_t":
        lambda xt, eps, alpha, sigma: (xt - per_image(sigma) * eps) / per_image(alpha) ** 2,
    "the noise is subtracted without its scale sigma":
        lambda xt, eps, alpha, sigma: (xt - eps) / per_image(alpha),
    "not divided by alpha: x_t - sigma eps is alpha x0, not x0":
        lambda xt, eps, alpha, sigma: xt - per_image(sigma) * eps,
}
