"""Chapter 10, Transformers and flows: the common mistakes of its exercises, each written out as the
wrong answer it gives (see `minidiff.course.mistakes`)."""

import jax

from minidiff.corruption import per_image

INTERPOLATE = {
    "t and 1 - t are swapped: at t = 0 the path is at the data, at t = 1 at the noise":
        lambda x0, eps, t: per_image(t) * x0 + (1 - per_image(t)) * eps,
}

HEUN_STEP = {
    "Euler's step, without the correction: average the velocities at both ends":
        lambda velocity_at, x, velocity, t, s: x + (s - t) * velocity,
    "the trial's velocity alone: Heun averages it with the velocity at the start":
        lambda velocity_at, x, velocity, t, s: x + (s - t) * velocity_at(x + (s - t) * velocity, s),
    "the trial's velocity is asked at time t: the trial point lies at time s":
        lambda velocity_at, x, velocity, t, s: x + (s - t) * 0.5 * (velocity + velocity_at(x + (s - t) * velocity, t)),
}

LOGIT_NORMAL_TIMES = {
    "the sigmoid is missing: normal draws are not times in (0, 1)":
        lambda key, batch: jax.random.normal(key, (batch,)),
    "uniform times: logit-normal times crowd the middle, where the flow is hardest to learn":
        lambda key, batch: jax.random.uniform(key, (batch,)),
}
