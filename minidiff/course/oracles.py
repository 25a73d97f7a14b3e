"""Denoisers whose answer is known in closed form, for checking samplers (of diffusion, and of flows),
and for drawing the paths they take (a few points in the plane, chapter 10).

For data x0 ~ N(0, s^2 I), the best possible x0 prediction from
x_t = a x0 + sqrt(1 - a^2) eps (a = sqrt(alpha_bar)) is linear:

    E[x0 | x_t] = a s^2 / (a^2 s^2 + 1 - a^2) x_t.

Driven by it, a correct sampler must produce samples with standard deviation s,
and a deterministic one must carry each starting noise to a point we can
compute (`exact_ode_solution`).
"""

import types

import jax
import jax.numpy as jnp
from flax import nnx

from minidiff.corruption import Diffusion, cosine_alpha_bar
from minidiff.flows import StraightFlow


class GaussianOracle(nnx.Module):
    """Predicts x0 exactly for Gaussian data of standard deviation `std` under the cosine
    schedule; has the interface samplers call (`encode_captions`, `denoise`) and ignores captions.
    Sample it with its own `process`, which says that it predicts x0."""

    process = Diffusion(prediction="x0")

    def __init__(self, std: float = 0.3, image_size: int = 4):
        self.std = std
        self.config = types.SimpleNamespace(process=self.process, denoiser=types.SimpleNamespace(
            image_size=image_size, in_channels=3, out_channels=3))

    def encode_captions(self, token_ids):
        return (jnp.zeros(token_ids.shape + (1,)),)

    def denoise(self, xt, t, caption):
        alpha_bar = cosine_alpha_bar(t).reshape(-1, 1, 1, 1)  # the cosine schedule at network time t
        return jnp.sqrt(alpha_bar) * self.std**2 / (alpha_bar * self.std**2 + 1 - alpha_bar) * xt


def exact_ode_solution(x, alpha, sigma, std: float):
    """Where the probability-flow ODE carries x, started at the noise level (alpha, sigma), for Gaussian data
    of standard deviation `std`: x_t has variance V = alpha^2 s^2 + sigma^2, the ODE keeps x_t / sqrt(V)
    fixed, and at t = 0, V = s^2. The same for diffusion and for the straight-line flow."""
    return std * x / (alpha**2 * std**2 + sigma**2) ** 0.5


class GaussianFlowOracle(GaussianOracle):
    """The exact velocity of the straight-line flow for the same Gaussian data: with
    x_t = (1 - t) x0 + t eps, x_t has variance V(t) = (1 - t)^2 s^2 + t^2 and

        E[eps - x0 | x_t] = (t - (1 - t) s^2) / V(t) x_t,

    whose ODE carries x at t = 1 to s x at t = 0 (`x_t = sqrt(V(t)) z` solves it)."""

    process = StraightFlow()

    def denoise(self, xt, t, caption):
        t = t.reshape(-1, 1, 1, 1)
        return (t - (1 - t) * self.std**2) / ((1 - t) ** 2 * self.std**2 + t**2) * xt


def point_cloud_x0(x, points, signal, noise):
    """E[x0 | x] for x = signal x0 + noise eps, x0 drawn uniformly from `points` (K, D): each point
    weighted by how likely it makes x, a softmax of -|x - signal p|^2 / (2 noise^2). x: (N, D) -> (N, D);
    signal and noise are numbers or one per row."""
    signal, noise = jnp.reshape(signal, (-1, 1, 1)), jnp.reshape(noise, (-1, 1))
    logits = -jnp.sum((x[:, None] - signal * points[None]) ** 2, axis=-1) / (2 * noise**2)  # (N, K)
    return jax.nn.softmax(logits, axis=1) @ points


class PointCloudOracle(nnx.Module):
    """The exact denoiser of data made of a few points in D dimensions (images of shape (1, 1, D)), under
    diffusion with the cosine schedule (it predicts x0) or as a straight-line flow (the velocity): low-
    dimensional data whose sampling paths can be drawn. Has the interface samplers call; ignores captions.
    Sample it with its own `process`."""

    def __init__(self, points, process=Diffusion(prediction="x0")):
        self.points = jnp.asarray(points, jnp.float32)
        self.process = process
        dims = self.points.shape[1]
        self.config = types.SimpleNamespace(process=process, denoiser=types.SimpleNamespace(
            image_size=1, in_channels=dims, out_channels=dims))

    def encode_captions(self, token_ids):
        return (jnp.zeros(token_ids.shape + (1,)),)

    def denoise(self, xt, t, caption):
        x = xt.reshape(xt.shape[0], -1)
        t = t.reshape(-1, 1)
        if self.process.kind == "diffusion":
            alpha_bar = cosine_alpha_bar(t)
            return point_cloud_x0(x, self.points, jnp.sqrt(alpha_bar), jnp.sqrt(1 - alpha_bar)).reshape(xt.shape)
        x0 = point_cloud_x0(x, self.points, 1 - t, t)
        return ((x - x0) / t).reshape(xt.shape)  # the velocity eps - x0 that x_t = (1 - t) x0 + t eps implies
