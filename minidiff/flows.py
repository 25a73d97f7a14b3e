"""A later stage — straight-line flows: rectified flow and flow matching.

Diffusion corrupts an image along a curve, x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps.
A flow takes the straight line from the image to the noise instead,

    x_t = (1 - t) x0 + t eps,        t in [0, 1]                 (Liu et al. 2022, eq. 1)

whose velocity dx_t/dt = eps - x0 is the same at every t. The network learns
that velocity: a squared error against eps - x0 at random t ("rectified
flow", Liu et al. 2022; "conditional flow matching" with straight paths,
Lipman et al. 2023, eq. 23). Averaged over the images and noises that pass
through a point, those velocities make a field whose ODE dx/dt = v(x, t),
run from pure noise at t = 1 back to t = 0, carries noise to images.

Which t to train on matters: the velocity is hardest to guess in the middle,
where neither the image nor the noise dominates. Esser et al. 2024 (SD3, sec.
3.1) draw t = sigmoid(n), n ~ N(0, 1) ("logit-normal"), which trains most
there; "uniform" is the plain choice.

That is all a flow changes. In the terms of `minidiff.corruption.Diffusion`,
x_t = alpha x0 + sigma eps with alpha = 1 - t and sigma = t, and the network
predicts the velocity v = eps - x0, from which

    x0 = x_t - sigma v,      eps = x_t + alpha v.

`StraightFlow` is that process; the loss (`minidiff.loss`) and every sampler
(`minidiff.sampling`) take it as they take diffusion. An Euler step of the
flow's ODE in t is exactly the DDIM step, x_s = alpha_s x0 + sigma_s eps, so
"Euler" is DDIM here; what differs is what the network is asked to learn, and
which paths the ODE's solutions take.
"""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from minidiff.corruption import per_image

VELOCITY = "velocity"  # what a flow's network predicts: eps - x0
TIME_SAMPLINGS = ("logit_normal", "uniform")
# The least noisy level a sampler visits, as a noise-to-signal ratio sigma / alpha (Karras et al. 2022,
# Table 1, their sigma_min): the path itself goes on to t = 0, where there is nothing left to remove.
NOISE_TO_SIGNAL_MIN = 0.002


def interpolate(x0, eps, t):
    """x_t = (1 - t) x0 + t eps, the straight path; t has shape (B,)."""
    return (1 - per_image(t)) * x0 + per_image(t) * eps


def velocity_target(x0, eps):
    """dx_t/dt along the straight path: what the network regresses."""
    return eps - x0


def sample_times(key, batch: int, how: str = "logit_normal"):
    """t in (0, 1) for each of `batch` images: logit-normal (Esser et al. 2024, eq. 19, m = 0, s = 1) or uniform."""
    if how == "logit_normal":
        return jax.nn.sigmoid(jax.random.normal(key, (batch,)))
    if how == "uniform":
        return jax.random.uniform(key, (batch,))
    raise ValueError(f"unknown time sampling {how!r}: choose one of {TIME_SAMPLINGS}")


@dataclasses.dataclass(frozen=True)
class StraightFlow:
    """The straight-line flow as a process: alpha = 1 - t, sigma = t, the network predicts the velocity,
    every error weighs the same."""

    time_sampling: str = "logit_normal"  # one of TIME_SAMPLINGS: where training times are drawn

    kind: ClassVar[str] = "flow"
    prediction: ClassVar[str] = VELOCITY
    # The levels a second-order ODE solver visits unless told otherwise (`sampling.spacing_of`): uniform
    # steps in t, which suit straight paths (docs/samplers.md has the errors of both spacings).
    solver_spacing: ClassVar[str] = "uniform"

    def __post_init__(self):
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {self.time_sampling!r}")

    def training_times(self, key, batch: int):
        t = sample_times(key, batch, self.time_sampling)
        return t, 1.0 - t, t

    def target(self, x0, eps, alpha, sigma):
        return velocity_target(x0, eps)

    def loss_weight(self, alpha, sigma):
        return jnp.ones_like(alpha)

    def x0_and_eps(self, output, xt, alpha, sigma):
        return xt - per_image(sigma) * output, xt + per_image(alpha) * output

    # The least noisy level a sampler visits: below it there is next to nothing left to remove.
    t_min: ClassVar[float] = NOISE_TO_SIGNAL_MIN / (1.0 + NOISE_TO_SIGNAL_MIN)

    def alpha_sigma(self, t) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(t, np.float64)
        return 1.0 - t, t

    def time_of(self, noise_to_signal) -> np.ndarray:
        """sigma / alpha = t / (1 - t), solved for t."""
        noise_to_signal = np.asarray(noise_to_signal, np.float64)
        return noise_to_signal / (1.0 + noise_to_signal)
