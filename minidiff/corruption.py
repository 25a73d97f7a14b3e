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
each step). The schedule is plain data, not a module.

The `Diffusion` process at the end of this file gathers what training and
sampling need to know of it: where training images are noised, what the
network predicts and how its errors are weighed, and which noise levels a
sampler may visit. A straight-line flow (`minidiff.flows`) is another process
with the same interface, so the loss and every sampler serve both.

Images are NHWC float arrays in [-1, 1]: `to_model_range` brings uint8
pixels into that range, `to_uint8` takes samples back out of it.
"""

import dataclasses
import functools
import math
from typing import ClassVar, NamedTuple

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
    def num_timesteps(self) -> int:
        """T, the number of steps of the forward process."""
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
    num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> NoiseSchedule:
    """beta rising linearly from beta_start to beta_end (Ho et al. 2020, sec. 4).

    The betas are quoted for T = 1000 and rescaled for other T, so the total
    amount of noise stays the same (Nichol & Dhariwal 2021, sec. 3.2).
    """
    scale = 1000.0 / num_timesteps
    return schedule_from_beta(
        jnp.linspace(beta_start * scale, beta_end * scale, num_timesteps)
    )


def cosine_schedule(num_timesteps: int = 1000) -> NoiseSchedule:
    """The cosine schedule sampled at T steps (Nichol & Dhariwal 2021, eq. 17)."""
    return schedule_from_alpha_bar(cosine_alpha_bar(jnp.linspace(0.0, 1.0, num_timesteps + 1)))


SCHEDULES = {"linear": linear_schedule, "cosine": cosine_schedule}


def make_schedule(name: str, num_timesteps: int = 1000) -> NoiseSchedule:
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}: choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](num_timesteps)


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
# Given x_t = alpha x0 + sigma eps (alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar)),
# knowing any one of eps, x0 or v = alpha eps - sigma x0 (Salimans & Ho 2022, sec. 4)
# determines the other two. The network predicts one of them; training needs
# the target, sampling needs x0 and eps back.

PREDICTIONS = ("v", "eps", "x0")  # the first is the default


def per_image(values):
    """(B,) -> (B, 1, 1, 1): one value per image, broadcast over its pixels."""
    return jnp.reshape(values, (-1, 1, 1, 1))


def prediction_target(prediction: str, x0, eps, alpha, sigma):
    """The regression target for a network that predicts `prediction`; alpha and sigma are (B,)."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return per_image(alpha) * eps - per_image(sigma) * x0
    raise ValueError(f"unknown prediction {prediction!r}: choose one of {PREDICTIONS}")


def x0_and_eps(prediction: str, output, xt, alpha, sigma):
    """Turn a network output back into (x0_pred, eps_pred), using x_t = alpha x0 + sigma eps."""
    a, s = per_image(alpha), per_image(sigma)
    if prediction == "eps":
        return (xt - s * output) / a, output
    if prediction == "x0":
        return output, (xt - a * output) / s
    if prediction == "v":  # alpha^2 + sigma^2 = 1 makes the inversion a rotation
        return a * xt - s * output, s * xt + a * output
    raise ValueError(f"unknown prediction {prediction!r}: choose one of {PREDICTIONS}")


# --- How the errors are weighed ---------------------------------------------------

LOSS_WEIGHTINGS = ("clipped_snr", "min_snr", "none")


def loss_weight(weighting: str, prediction: str, snr_t, gamma: float):
    """Per-example weight of the squared error of the network's output.

    Every weighting is a weight w on the x0 error, ||x0_pred - x0||^2, turned
    into the weight on the network's own error (eps's error is SNR times
    smaller than x0's, v's is SNR + 1 times smaller; Salimans & Ho 2022, sec. 4):

    "min_snr": w = min(SNR, gamma) (Hang et al. 2023, eq. 9 and table 1), so
        the nearly clean steps, whose x0 error is tiny, do not dominate.
    "clipped_snr" (the default): w = clip(SNR, 1, gamma), min-SNR with the
        floor of Salimans & Ho's "truncated SNR" weighting. Without the floor,
        w ~ SNR -> 0 at the noisiest steps, and those are where the caption is
        all the network has to go on: nothing of the image is left to see, so
        only the caption says which background to paint. A model trained with
        min-SNR alone learns to ignore words such as "on a sand background".
    "none": the plain squared error of the network's output.

    A network predicting eps gets no floor: on the eps error it would be a
    weight of 1 / SNR, about 4e8 at the last cosine step.
    """
    if weighting == "none":
        return jnp.ones_like(snr_t)
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {weighting!r}: choose one of {LOSS_WEIGHTINGS}")
    x0_weight = jnp.minimum(snr_t, gamma)
    if weighting == "clipped_snr" and prediction != "eps":
        x0_weight = jnp.maximum(x0_weight, 1.0)
    return {"eps": x0_weight / snr_t, "x0": x0_weight, "v": x0_weight / (snr_t + 1.0)}[prediction]


# --- The process as a whole ----------------------------------------------------------
#
# A sampler (stage 4) and the training loss see the forward process through
# one small interface, which a straight-line flow (`minidiff.flows`) offers too:
#
#   training_times(key, B)         -> t, alpha, sigma (B,): where each training image is noised
#   target(x0, eps, alpha, sigma)  -> what the network regresses;  loss_weight(alpha, sigma) -> (B,)
#   x0_and_eps(output, x, alpha, sigma) -> what a network output says of the clean image and the noise
#   alpha_sigma(t), time_of(noise_to_signal), t_min  -> the noise levels a sampler visits (on the host)
#   kind, prediction, solver_spacing  -> its name, what its network predicts, the levels its ODE is best
#                                        solved on by a second-order solver
#
# Time runs from t = 0 (the clean image) to t = 1 (pure noise), and the network is
# told t: for diffusion t = (step + 1) / T, so that step T - 1 is t = 1.


def network_time(step_index, num_timesteps: int):
    """Step index 0..T-1 -> the time t in (0, 1] the network is told (1 = pure noise)."""
    return (jnp.asarray(step_index, jnp.float32) + 1.0) / num_timesteps


@dataclasses.dataclass(frozen=True)
class Diffusion:
    """The diffusion process (Ho et al. 2020): x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps over
    T discrete steps of a schedule, and what the network predicts about it (eps, x0 or v) and how its
    errors are weighed. A frozen dataclass: a model's checkpoint records it, and compiled programs are
    specialised to it."""

    schedule: str = "cosine"  # one of SCHEDULES
    num_timesteps: int = 1000  # T
    prediction: str = "v"  # one of PREDICTIONS
    loss_weighting: str = "clipped_snr"  # one of LOSS_WEIGHTINGS (see `loss_weight`)
    min_snr_gamma: float = 5.0  # the cap of both SNR weightings

    kind: ClassVar[str] = "diffusion"
    # The levels a second-order ODE solver visits unless told otherwise (`sampling.spacing_of`): Karras et
    # al. 2022's, crowded near the clean end, where the curved paths of diffusion bend most.
    solver_spacing: ClassVar[str] = "karras"

    def __post_init__(self):
        _require(self.schedule in SCHEDULES, "schedule", self.schedule, f"one of {tuple(SCHEDULES)}")
        _require(isinstance(self.num_timesteps, (int, np.integer)) and self.num_timesteps >= 2, "num_timesteps",
                 self.num_timesteps, "a whole number of at least 2")
        _require(self.prediction in PREDICTIONS, "prediction", self.prediction, f"one of {PREDICTIONS}")
        _require(self.loss_weighting in LOSS_WEIGHTINGS, "loss_weighting", self.loss_weighting,
                 f"one of {LOSS_WEIGHTINGS}")
        _require(math.isfinite(self.min_snr_gamma) and self.min_snr_gamma > 0, "min_snr_gamma", self.min_snr_gamma,
                 "a positive number")

    def noise_schedule(self) -> NoiseSchedule:
        """The discrete schedule: alpha_bar at each of the T steps."""
        return _noise_schedule(self.schedule, self.num_timesteps)

    # Training.

    def training_times(self, key, batch: int):
        """A step of the forward process per image, drawn uniformly: (t, alpha, sigma), each (B,)."""
        alpha_bar = self.noise_schedule().alpha_bar
        step = jax.random.randint(key, (batch,), 0, self.num_timesteps)
        return network_time(step, self.num_timesteps), jnp.sqrt(alpha_bar[step]), jnp.sqrt(1.0 - alpha_bar[step])

    def target(self, x0, eps, alpha, sigma):
        return prediction_target(self.prediction, x0, eps, alpha, sigma)

    def loss_weight(self, alpha, sigma):
        return loss_weight(self.loss_weighting, self.prediction, (alpha / sigma) ** 2, self.min_snr_gamma)

    def x0_and_eps(self, output, xt, alpha, sigma):
        return x0_and_eps(self.prediction, output, xt, alpha, sigma)

    # The levels a sampler visits, worked out on the host in float64 (levels near alpha_bar = 1 need
    # the precision). Between two steps, log alpha_bar is interpolated linearly in t, as DPM-Solver
    # does for discrete-time models (Lu et al. 2022, appendix).

    @property
    def t_min(self) -> float:
        """The least noisy level a sampler visits: the first step, t = 1 / T, the least noisy the network was
        trained at."""
        return 1.0 / self.num_timesteps

    def _log_alpha_bar(self) -> tuple[np.ndarray, np.ndarray]:
        times = (np.arange(self.num_timesteps) + 1.0) / self.num_timesteps
        return times, np.log(np.asarray(self.noise_schedule().alpha_bar, np.float64))

    def alpha_sigma(self, t) -> tuple[np.ndarray, np.ndarray]:
        times, log_alpha_bar = self._log_alpha_bar()
        alpha_bar = np.exp(np.interp(np.asarray(t, np.float64), times, log_alpha_bar))
        return np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)

    def time_of(self, noise_to_signal) -> np.ndarray:
        """The time at which sigma / alpha (Karras et al.'s sigma) reaches `noise_to_signal`."""
        times, log_alpha_bar = self._log_alpha_bar()
        log_alpha_bar_wanted = -np.log1p(np.asarray(noise_to_signal, np.float64) ** 2)
        return np.interp(-log_alpha_bar_wanted, -log_alpha_bar, times)


@functools.cache
def _noise_schedule(name: str, num_timesteps: int) -> NoiseSchedule:
    # Worked out once, as a concrete array even when first asked for inside a compiled program (which
    # then embeds the table as a constant).
    with jax.ensure_compile_time_eval():
        return make_schedule(name, num_timesteps)


def _require(ok: bool, name: str, value, what: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {what}, got {value!r}")
