"""Stage 1 — destroying images: noise schedules and the forward process.

A diffusion model learns to undo a corruption, so we start with the corruption.
The forward process of Ho et al. 2020 adds a little Gaussian noise at each of
T steps,

    q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I),          (eq. 2)

and, because Gaussians compose, any step can be reached from the clean image
in one jump,

    q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I),      (eq. 4)

with alpha_t = 1 - beta_t and alpha_bar_t = prod_{s<=t} alpha_s. A schedule is
therefore nothing more than the array alpha_bar (how much signal is left at
each step). The schedule is plain data, not a module: losses and samplers take
it as an argument.

Images are NHWC float arrays in [-1, 1]: `to_model_range` brings uint8
pixels into that range, `to_uint8` takes samples back out of it.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def to_model_range(images_uint8):
    """uint8 pixels [0, 255] -> float32 [-1, 1], the range the forward process assumes.

    Works on numpy arrays and, inside a compiled step, on JAX arrays alike.
    """
    return images_uint8.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images):
    """float [-1, 1] -> uint8 pixels [0, 255] (clipping what a sampler overshoots); a numpy array."""
    images = np.asarray(images, np.float32)
    return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


class NoiseSchedule(NamedTuple):
    """A discrete schedule of T steps (a NamedTuple, so it is a JAX pytree).

    Index t = 0 is the first noising step, t = T - 1 the last.
    """

    beta: jax.Array  # (T,) noise added at step t
    alpha: jax.Array  # (T,) 1 - beta: signal kept at step t
    alpha_bar: jax.Array  # (T,) product of alpha up to and including t

    @property
    def num_steps(self) -> int:
        return self.beta.shape[0]


def schedule_from_beta(beta) -> NoiseSchedule:
    beta = jnp.asarray(beta, jnp.float32)
    alpha = 1.0 - beta
    return NoiseSchedule(beta=beta, alpha=alpha, alpha_bar=jnp.cumprod(alpha))


def schedule_from_alpha_bar(alpha_bar, max_beta: float = 0.999) -> NoiseSchedule:
    """Discretise a continuous alpha_bar(t) curve, given at t = 0, 1/T, ..., 1.

    beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1), clipped below 1 so the last
    step is not a division by zero (Nichol & Dhariwal 2021, eq. 17 and below).
    """
    alpha_bar = jnp.asarray(alpha_bar, jnp.float32)
    beta = jnp.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, max_beta)
    return schedule_from_beta(beta)


# --- Continuous time: alpha_bar as a function of t in [0, 1] --------------------


def linear_alpha_bar(t, beta_min: float = 0.1, beta_max: float = 20.0):
    """alpha_bar(t) of the linear schedule in continuous time (the VP SDE).

    beta(t) = beta_min + t (beta_max - beta_min) is the noise rate; integrating
    it gives alpha_bar(t) = exp(-(beta_min t + (beta_max - beta_min) t^2 / 2))
    (Song et al. 2021, "Score-based generative modeling through SDEs", eq. 33).
    With T = 1000 discrete steps, beta_t = beta(t) / T recovers Ho et al.'s
    linear betas from 1e-4 to 2e-2.
    """
    t = jnp.asarray(t, jnp.float32)
    return jnp.exp(-(beta_min * t + 0.5 * (beta_max - beta_min) * t**2))


def cosine_alpha_bar(t, offset: float = 0.008):
    """alpha_bar(t) of the cosine schedule (Nichol & Dhariwal 2021, eq. 17).

    The signal fades like cos^2, so far fewer steps are wasted on images that
    are already pure noise than with the linear schedule. The small offset
    keeps beta from being vanishingly small near t = 0.
    """
    t = jnp.asarray(t, jnp.float32)
    f = jnp.cos((t + offset) / (1.0 + offset) * jnp.pi / 2) ** 2
    f0 = jnp.cos(offset / (1.0 + offset) * jnp.pi / 2) ** 2
    return f / f0


# --- Discrete schedules ------------------------------------------------------


def linear_schedule(
    num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> NoiseSchedule:
    """beta rising linearly from beta_start to beta_end (Ho et al. 2020, sec. 4).

    The betas are quoted for T = 1000 and rescaled for other T, so the total
    amount of noise stays the same (Nichol & Dhariwal 2021, sec. 3.2).
    """
    scale = 1000.0 / num_steps
    return schedule_from_beta(
        jnp.linspace(beta_start * scale, beta_end * scale, num_steps)
    )


def cosine_schedule(num_steps: int = 1000) -> NoiseSchedule:
    """The cosine schedule sampled at T steps (Nichol & Dhariwal 2021, eq. 17)."""
    return schedule_from_alpha_bar(cosine_alpha_bar(jnp.linspace(0.0, 1.0, num_steps + 1)))


SCHEDULES = {"linear": linear_schedule, "cosine": cosine_schedule}


def make_schedule(name: str, num_steps: int = 1000) -> NoiseSchedule:
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}: choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](num_steps)


# --- The forward process --------------------------------------------------------


def snr(alpha_bar):
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) of q(x_t | x_0).

    Kingma et al. 2021 ("Variational diffusion models") show that the SNR alone
    determines a noise level; log-SNR falls from about +10 to about -10.
    """
    return alpha_bar / (1.0 - alpha_bar)


def q_sample(x0, alpha_bar_t, eps):
    """Jump straight to step t: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps.

    Ho et al. 2020, eq. 4 (reparametrised). alpha_bar_t has shape (B,) and is
    broadcast over the image axes; eps ~ N(0, I) has the shape of x0.
    """
    alpha_bar_t = jnp.asarray(alpha_bar_t).reshape(-1, 1, 1, 1)
    return jnp.sqrt(alpha_bar_t) * x0 + jnp.sqrt(1.0 - alpha_bar_t) * eps


def q_step(x_prev, beta_t, eps):
    """One step of noising: x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps (eq. 2).

    Iterating this T times reaches the same distribution as `q_sample` once.
    """
    beta_t = jnp.asarray(beta_t).reshape(-1, 1, 1, 1)
    return jnp.sqrt(1.0 - beta_t) * x_prev + jnp.sqrt(beta_t) * eps


def recolour_pixels(key, x0, fraction):
    """The naive corruption: replace a `fraction` of pixels with random colours.

    A first intuition, not what diffusion models use: the destroyed pixels
    carry no trace of the image at all, so there is nothing smooth to learn to
    undo, unlike Gaussian noise, which shrinks the signal a little at a time.
    `fraction` is a scalar or one value per image, in [0, 1].
    """
    mask_key, colour_key = jax.random.split(key)
    batch, height, width, channels = x0.shape
    fraction = jnp.broadcast_to(jnp.asarray(fraction, x0.dtype), (batch,))
    replace = jax.random.uniform(mask_key, (batch, height, width, 1)) < fraction[:, None, None, None]
    random_colours = jax.random.uniform(colour_key, x0.shape, x0.dtype, -1.0, 1.0)
    return jnp.where(replace, random_colours, x0)


# --- What a denoiser may predict -------------------------------------------------
#
# Given x_t and the noise level, knowing any one of eps, x0 or
# v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 (Salimans & Ho 2022, sec. 4)
# determines the other two. The network predicts one of them; training needs
# the target, sampling needs x0 and eps back.

PREDICTIONS = ("eps", "x0", "v")


def prediction_target(prediction: str, x0, eps, alpha_bar_t):
    """The regression target for a network that predicts `prediction`."""
    a = jnp.sqrt(alpha_bar_t).reshape(-1, 1, 1, 1)
    s = jnp.sqrt(1.0 - alpha_bar_t).reshape(-1, 1, 1, 1)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return a * eps - s * x0
    raise ValueError(f"unknown prediction {prediction!r}: choose one of {PREDICTIONS}")


def x0_and_eps(prediction: str, output, xt, alpha_bar_t):
    """Turn a network output back into (x0_pred, eps_pred), using x_t = a x0 + s eps."""
    a = jnp.sqrt(alpha_bar_t).reshape(-1, 1, 1, 1)
    s = jnp.sqrt(1.0 - alpha_bar_t).reshape(-1, 1, 1, 1)
    if prediction == "eps":
        return (xt - s * output) / a, output
    if prediction == "x0":
        return output, (xt - a * output) / s
    if prediction == "v":  # a^2 + s^2 = 1 makes the inversion a rotation
        return a * xt - s * output, s * xt + a * output
    raise ValueError(f"unknown prediction {prediction!r}: choose one of {PREDICTIONS}")


def network_time(step_index, num_steps: int):
    """Step index 0..T-1 -> the time t in (0, 1] the network is told (1 = pure noise).

    A fractional index (a noise level between two steps, see `sampling`) maps the same way.
    """
    return (jnp.asarray(step_index, jnp.float32) + 1.0) / num_steps
