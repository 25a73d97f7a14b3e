"""Stage 4 — sampling: start from pure noise and denoise step by step.

Every sampler here is the same loop — ask the network what the clean image
looks like, then take one step from noise level t to a less noisy s — with a
different update rule for the step. The loop and the rules see the forward
process only as x_t = alpha_t x0 + sigma_t eps (`minidiff.corruption.Diffusion`,
or a straight-line flow, `minidiff.flows.StraightFlow`), so each is written
once and serves both:

  - DDIM (Song et al. 2021, eq. 12): x_s = alpha_s x0 + sigma_s eps, with eps
    and x0 predicted at t. It is the exact step if x0 were the same all the way,
    and it is Euler's method for the probability-flow ODE in Karras et al.'s
    variables x / alpha and sigma / alpha (for a flow, Euler's method in t too).
    A family indexed by eta: eta = 0 is deterministic, eta > 0 adds fresh noise.
  - DDPM ancestral sampling (Ho et al. 2020, Algorithm 2): draw x_s from the
    true posterior q(x_s | x_t, x0) with x0 replaced by its prediction. That
    is DDIM with eta = 1, and written as such.
  - Heun (Karras et al. 2022, Algorithm 1): the same ODE, solved with a
    second-order step (a trial DDIM step, then the average of the two slopes),
    taken where every process's paths are straight lines (`heun_step`). Two
    network calls per step.
  - DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): second order too, but with
    one network call per step, reusing the previous step's x0 prediction.

Which noise levels a sampler visits is its `spacing`: "uniform" in t (from
pure noise at t = 1, N levels ending at t = 1 / N: Lin et al. 2024's
"trailing" steps), or "karras" (Karras et al. 2022, eq. 5: steps crowded near
the clean end, where detail forms). Unless told otherwise, the first-order
samplers step uniformly, and the second-order ones take the levels the
process's own ODE is best solved on (`solver_spacing`: Karras's for diffusion,
uniform steps along a flow's straight paths). The very last level returns the
x0 prediction made there: where every rule would land, at t = 0.

Classifier-free guidance (Ho & Salimans 2022, eq. 6) runs the network with and
without the caption and extrapolates: out = uncond + w (cond - uncond). w = 1
is the plain conditional model, w = 0 the unconditional one, w > 1 follows the
caption more closely at some cost in diversity. Because x0, eps and whatever
the network predicts are affine in one another for fixed x_t, guiding any of
them is the same.

Each x0 prediction may be clipped before the step uses it. Pixel images live
in [-1, 1], so clipping a prediction that overshoots ("static") keeps strong
guidance from driving colours out of range; a latent space has no such range
("none"). Static clipping flattens every overshooting pixel to the same
saturated value; "dynamic" thresholding (Imagen, Saharia et al. 2022, sec.
2.3) instead scales a whole image back into range when it overshoots (see
`dynamic_threshold`), keeping the differences between its pixels.
"""

import dataclasses
import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

SAMPLERS = ("ddim", "ddpm", "heun", "dpm++2m")  # the first is the default
SECOND_ORDER = ("heun", "dpm++2m")
SPACINGS = ("uniform", "karras")
# What is done to each x0 prediction: clip to [-1, 1], scale each image back into range, or nothing.
X0_CLIPPINGS = ("static", "dynamic", "none")
DYNAMIC_THRESHOLD_PERCENTILE = 99.5  # Imagen's p (Saharia et al. 2022, sec. 2.3)
# Karras et al. 2022 (Table 1) start their solvers at a noise-to-signal ratio sigma / alpha of 80 (their
# sigma_max): beyond it an image is pure noise for any purpose, while the cosine schedule's last step
# reaches about 20,000, and a flow's infinity, and steps up there would be wasted.
NOISE_TO_SIGNAL_MAX = 80.0


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """How to sample: checked here, once, for every caller (the `Generator`, the command, a recipe's
    [sample] table)."""

    sampler: str = "ddim"  # one of SAMPLERS
    sampling_steps: int = 50  # noise levels visited; Heun calls the network twice at all but the last
    guidance: float = 3.0  # classifier-free guidance: 1 = none, 0 = ignore the caption
    eta: float = 0.0  # DDIM's noise: 0 = deterministic; 1 would be DDPM
    # What is done to each x0 prediction (one of X0_CLIPPINGS); None: static for a pixel model, none for
    # a latent model (the `Generator` knows which it has).
    x0_clipping: str | None = None
    spacing: str | None = None  # one of SPACINGS; None: the sampler's own on the process (`spacing_of`)

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}: choose one of {SAMPLERS}")
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise ValueError(f"unknown spacing {self.spacing!r}: choose one of {SPACINGS}")
        if not isinstance(self.sampling_steps, (int, np.integer)) or self.sampling_steps < 1:
            raise ValueError(f"sampling_steps must be a whole number of at least 1, got {self.sampling_steps!r}")
        if not math.isfinite(self.guidance):
            raise ValueError(f"the guidance scale must be a finite number (1 = none, 0 = ignore the caption), "
                             f"got {self.guidance}")
        if not 0.0 <= self.eta <= 1.0:  # also false for NaN
            raise ValueError(f"eta must be between 0 (deterministic DDIM) and 1 (DDPM-like), got {self.eta}")
        if self.eta and self.sampler != "ddim":
            raise ValueError(f"eta is DDIM's noise; {self.sampler} adds "
                             + ("the noise of eta = 1" if self.sampler == "ddpm" else "none") + ": leave eta at 0")
        if self.x0_clipping is not None and self.x0_clipping not in X0_CLIPPINGS:
            raise ValueError(f"unknown x0 clipping {self.x0_clipping!r}: choose one of {X0_CLIPPINGS}")

    @property
    def network_calls(self) -> int:
        """Network calls per image (NFE); guidance's two passes are batched into one call."""
        return 2 * self.sampling_steps - 1 if self.sampler == "heun" else self.sampling_steps


class Trajectory(NamedTuple):
    """Where a sampler went: x_t at each level it visited and its x0 prediction there, each (N, B, H, W, C);
    the image it returns is the last x0 prediction."""

    xt: jax.Array
    x0: jax.Array


def check_rows(noise, caption_ids, empty_ids) -> None:
    """One row of noise, caption ids and empty-caption ids per image, or a ValueError that says so."""
    if empty_ids.shape != caption_ids.shape or noise.shape[0] != caption_ids.shape[0]:
        raise ValueError(f"noise {noise.shape}, caption_ids {caption_ids.shape} and empty_ids {empty_ids.shape} must "
                         "have one row per image, and the ids one shape (B, L): use tokenizer.empty(B)")


def dynamic_threshold(x0_pred, percentile: float = DYNAMIC_THRESHOLD_PERCENTILE):
    """Imagen's dynamic thresholding of x0 predictions (B, H, W, C).

    Per image, s = the `percentile`-th percentile of |x0_pred|, at least 1;
    the image is clipped to [-s, s] and divided by s. An image already within
    [-1, 1] (s = 1) is left as it is; one that overshoots is brought back into
    range as a whole, rather than having every overshooting pixel flattened to
    +-1, which is what saturates images at high guidance scales.
    """
    s = jnp.percentile(jnp.abs(x0_pred).reshape(x0_pred.shape[0], -1), percentile, axis=1)  # (B,)
    s = jnp.maximum(s, 1.0)[:, None, None, None]
    return jnp.clip(x0_pred, -s, s) / s


# --- Noise levels ----------------------------------------------------------------------


def karras_noise_to_signal(lowest: float, highest: float, count: int, rho: float = 7.0) -> np.ndarray:
    """k_i = (k_max^(1/rho) + i / (N - 1) (k_min^(1/rho) - k_max^(1/rho)))^rho, highest first.

    Karras et al. 2022, eq. 5, whose sigma is the noise-to-signal ratio k = sigma / alpha of a process
    (here sigma is x_t's noise scale): evenly spaced in k^(1/rho), so with rho = 7 most steps are spent
    at low noise, where the image's detail is decided.
    """
    ramp = np.linspace(0.0, 1.0, count)
    return (highest ** (1 / rho) + ramp * (lowest ** (1 / rho) - highest ** (1 / rho))) ** rho


def noise_to_signal(process, t) -> np.ndarray:
    """sigma / alpha at times t (infinite where alpha = 0, a flow's pure noise)."""
    alpha, sigma = process.alpha_sigma(t)
    with np.errstate(divide="ignore"):
        return sigma / alpha


def spacing_of(process, settings: SamplerSettings) -> str:
    """The spacing of the levels a sampler visits: the one asked for; else uniform for the first-order
    samplers, and the process's `solver_spacing` for the second-order ones."""
    if settings.spacing is not None:
        return settings.spacing
    return process.solver_spacing if settings.sampler in SECOND_ORDER else "uniform"


def time_grid(process, spacing: str, count: int) -> np.ndarray:
    """The `count` times a sampler visits, noisiest first, on the host in float64."""
    if spacing == "uniform":
        times = np.linspace(1.0, 0.0, count + 1)[:-1]
        if times[-1] < process.t_min * (1 - 1e-9):
            raise ValueError(f"{count} uniform steps go below the least noisy level this process was trained at "
                             f"(t = {process.t_min:g}): take at most {int(round(1 / process.t_min))}")
        return times
    if spacing == "karras":
        highest = min(float(noise_to_signal(process, 1.0)), NOISE_TO_SIGNAL_MAX)
        lowest = float(noise_to_signal(process, process.t_min))
        return process.time_of(karras_noise_to_signal(lowest, highest, count))
    raise ValueError(f"unknown spacing {spacing!r}: choose one of {SPACINGS}")


def noise_levels(process, settings: SamplerSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, alpha, sigma) of every level the sampler visits, each (sampling_steps,), noisiest first."""
    t = time_grid(process, spacing_of(process, settings), settings.sampling_steps)
    return (t, *process.alpha_sigma(t))


# --- Guidance -------------------------------------------------------------------------


def guided_output(model, xt, t, caption, empty_caption, guidance, guided: bool):
    """The network output under classifier-free guidance (one batched call for both)."""
    if not guided:
        return model.denoise(xt, t, caption)
    both = jax.tree.map(lambda c, e: jnp.concatenate([c, e]), caption, empty_caption)
    out = model.denoise(jnp.concatenate([xt, xt]), jnp.concatenate([t, t]), both)
    conditional, unconditional = jnp.split(out, 2)
    return unconditional + guidance * (conditional - unconditional)


# --- Update rules: one step from noise level t to a less noisy s ----------------------
#
# x_t = alpha_t x0 + sigma_t eps. Each rule is given both predictions at t, consistent
# with x_t (x0 may have been clipped, and eps recomputed to match).


def ddim_step(key, x0_pred, eps_pred, alpha_t, sigma_t, alpha_s, sigma_s, eta):
    """x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z (Song et al. 2021, eq. 12), z ~ N(0, I),

    with the step's noise c = eta times the std of the posterior q(x_s | x_t, x0): with
    alpha_ts = alpha_t / alpha_s, its variance is (sigma_t^2 - alpha_ts^2 sigma_s^2) sigma_s^2 / sigma_t^2
    (Kingma et al. 2021, eq. 33; for diffusion, Ho et al. 2020's beta tilde). eta = 1 draws from that
    posterior itself: DDPM's step.
    """
    posterior_variance = (sigma_t**2 - (alpha_t / alpha_s) ** 2 * sigma_s**2) * sigma_s**2 / sigma_t**2
    noise_std = eta * jnp.sqrt(jnp.maximum(posterior_variance, 0.0))
    direction = jnp.sqrt(jnp.maximum(sigma_s**2 - noise_std**2, 0.0)) * eps_pred
    return alpha_s * x0_pred + direction + noise_std * jax.random.normal(key, x0_pred.shape)


def heun_step(denoise, x, x0_pred, eps_pred, levels_t, levels_s):
    """One step of Heun's method (Karras et al. 2022, Algorithm 1, lines 5-8), in straight-line variables.

    Scaled by c = alpha + sigma, any process's x_t is a point on a straight line:
    X = x / c = (1 - tau) x0 + tau eps with tau = sigma / c, whose ODE is
    dX/dtau = eps - x0, finite from pure noise (tau = 1) to the clean image
    (tau = 0). A trial Euler step to s (the DDIM step), a second network call
    there, then the step again with the average of the two slopes: error O(h^3)
    per step, not O(h^2). On the straight-line flow (c = 1) this is Heun's method
    in t itself.
    """
    _, alpha_t, sigma_t = levels_t
    s, alpha_s, sigma_s = levels_s
    euler = alpha_s * x0_pred + sigma_s * eps_pred
    x0_at_s, eps_at_s = denoise(euler, s, alpha_s, sigma_s)
    c_t, c_s = alpha_t + sigma_t, alpha_s + sigma_s
    slope = 0.5 * ((eps_pred - x0_pred) + (eps_at_s - x0_at_s))
    return c_s * (x / c_t + (sigma_s / c_s - sigma_t / c_t) * slope)


def dpm_solver_2m_step(x, x0_pred, previous_x0, alpha_t, sigma_t, alpha_s, sigma_s, previous_h):
    """One step of DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2); returns (x_s, h).

    With lambda = log(alpha / sigma) and h = lambda_s - lambda_t, the exact solution of
    the ODE if x0 were constant over the step is x_s = (sigma_s / sigma_t) x_t +
    alpha_s (1 - e^-h) x0 (that is DDIM). The 2M step instead extrapolates x0 linearly in
    lambda from the previous step's prediction: D = (1 + 1 / 2r) x0 - (1 / 2r) x0_previous,
    r = h_previous / h. On the first step (previous_h = 0) it is plain DDIM. From pure
    noise (alpha_t = 0, a flow's t = 1) h is infinite and the step is DDIM's, as the formula
    says; so is the next one, whose r is infinite too: the solver is second order from its
    third level on.
    """
    h = jnp.log(alpha_s / sigma_s) - jnp.log(alpha_t / sigma_t)
    r = jnp.where(previous_h > 0, previous_h / h, 1.0)
    extrapolated = (1 + 0.5 / r) * x0_pred - (0.5 / r) * previous_x0
    data = jnp.where(previous_h > 0, extrapolated, x0_pred)
    return (sigma_s / sigma_t) * x - alpha_s * jnp.expm1(-h) * data, h


# --- The loop -------------------------------------------------------------------------


@partial(nnx.jit, static_argnames=("process", "sampler", "guided", "x0_clipping", "keep_trajectory"))
def _sample_loop(model, process, levels, caption_ids, empty_ids, conditioning, key, noise, guidance, eta,
                 sampler: str, guided: bool, x0_clipping: str, keep_trajectory: bool):
    # Once, reused at every step; an upscaler's low-res image goes with the caption and without it alike.
    caption = (*model.encode_captions(caption_ids), *conditioning)
    empty_caption = (*model.encode_captions(empty_ids), *conditioning)
    batch = noise.shape[0]

    def denoise(x, t, alpha, sigma):
        """(x0_pred, eps_pred) at noise level t, guided, with x0 clipped as asked."""
        output = guided_output(model, x, jnp.full((batch,), t), caption, empty_caption, guidance, guided)
        x0_pred, eps_pred = process.x0_and_eps(output, x, jnp.full((batch,), alpha), jnp.full((batch,), sigma))
        if x0_clipping != "none":
            # Bring the prediction into the image range and recompute eps to match it.
            x0_pred = jnp.clip(x0_pred, -1.0, 1.0) if x0_clipping == "static" else dynamic_threshold(x0_pred)
            eps_pred = (x - alpha * x0_pred) / sigma
        return x0_pred, eps_pred

    def one_step(carry, level_pair):
        x, key, previous_x0, previous_h = carry
        (t, alpha_t, sigma_t), (s, alpha_s, sigma_s) = level_pair
        key, step_key = jax.random.split(key)
        x0_pred, eps_pred = denoise(x, t, alpha_t, sigma_t)
        h = previous_h
        if sampler in ("ddim", "ddpm"):
            x = ddim_step(step_key, x0_pred, eps_pred, alpha_t, sigma_t, alpha_s, sigma_s, eta)
        elif sampler == "heun":
            x = heun_step(denoise, x, x0_pred, eps_pred, (t, alpha_t, sigma_t), (s, alpha_s, sigma_s))
        else:
            x, h = dpm_solver_2m_step(x, x0_pred, previous_x0, alpha_t, sigma_t, alpha_s, sigma_s, previous_h)
        return (x, key, x0_pred, h), (Trajectory(carry[0], x0_pred) if keep_trajectory else None)

    # levels: t, alpha, sigma, each (N,); the carry: x (B, H, W, C), the key, the previous x0 prediction
    # (B, H, W, C) and step h (DPM-Solver++'s).
    # Noise of the spread x_t has at the first level for data of unit variance: sqrt(alpha^2 + sigma^2).
    times, alphas, sigmas = levels
    x = noise * jnp.sqrt(alphas[0] ** 2 + sigmas[0] ** 2)
    now = (times[:-1], alphas[:-1], sigmas[:-1])
    after = (times[1:], alphas[1:], sigmas[1:])
    (x, _, _, _), trajectory = jax.lax.scan(one_step, (x, key, jnp.zeros_like(x), jnp.float32(0.0)), (now, after))
    x0_pred, _ = denoise(x, times[-1], alphas[-1], sigmas[-1])  # the last level: its x0 prediction
    if keep_trajectory:
        trajectory = jax.tree.map(lambda path, last: jnp.concatenate([path, last[None]]), trajectory,
                                  Trajectory(x, x0_pred))
    return x0_pred, trajectory


def sample(model, process, noise, caption_ids, empty_ids, key=None, *, keep_trajectory: bool = False,
           conditioning=(), **settings):
    """Denoise `noise` (B, H, W, C), pure Gaussian noise, into one image per caption; (B, H, W, C).

    `process` is the forward process the model learned to undo (`corruption.Diffusion` or
    `flows.StraightFlow`); `settings` are `SamplerSettings`' (sampler, sampling_steps, guidance,
    eta, x0_clipping, spacing), checked there. caption_ids (B, L) are the captions, empty_ids
    (B, L) the "no caption" ids (`Tokenizer.empty(B)`), used for guidance. `key` drives the
    fresh noise of DDPM and of DDIM with eta > 0 (the other samplers are deterministic). With
    keep_trajectory, also returns the `Trajectory`: x_t and the x0 prediction at every level.
    One compilation per (batch shape, settings). The arrays stay where the caller put them:
    rows split over devices, with the model replicated on them, are sampled there
    (`minidiff.generator.Generator` does that). An upscaler takes its `conditioning` too
    (`minidiff.superres.low_res_condition`).
    """
    settings = SamplerSettings(**settings)
    check_rows(noise, caption_ids, empty_ids)
    levels = tuple(jnp.asarray(level, jnp.float32) for level in noise_levels(process, settings))
    key = jax.random.key(0) if key is None else key
    eta = 1.0 if settings.sampler == "ddpm" else settings.eta
    images, trajectory = _sample_loop(
        model, process, levels, caption_ids, empty_ids, tuple(conditioning), key, noise,
        jnp.float32(settings.guidance), jnp.float32(eta), sampler=settings.sampler,
        guided=settings.guidance != 1.0, x0_clipping=settings.x0_clipping or "static",
        keep_trajectory=keep_trajectory,
    )
    return (images, trajectory) if keep_trajectory else images
