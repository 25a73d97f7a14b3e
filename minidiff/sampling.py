"""Stage 4 — sampling: start from pure noise and denoise step by step.

Every sampler here is the same loop — ask the network what the clean image
looks like, then take one step from x_t to a less noisy x_s — with a different
update rule for the step:

  - DDPM ancestral sampling (Ho et al. 2020, Algorithm 2): draw x_s from the
    true posterior q(x_s | x_t, x0) with x0 replaced by its prediction.
  - DDIM (Song et al. 2021, eq. 12): a family indexed by eta; eta = 0 is
    deterministic (an ODE), eta = 1 recovers DDPM's posterior.
  - Heun (Karras et al. 2022, Algorithm 1): the same ODE as DDIM, solved with a
    second-order step (a trial Euler step, then the average of the two slopes).
    Two network calls per step.
  - DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): second order too, but with
    one network call per step, reusing the previous step's x0 prediction.

DDPM and DDIM visit `num_steps` of the T training steps, evenly spaced
(Nichol & Dhariwal 2021, sec. 4). The second-order solvers take Karras et al.'s
noise levels, which crowd the steps near the clean end where detail forms.
Every update rule is written for any pair of noise levels t > s, given as
alpha_bar values; the very last step goes to the clean image (alpha_bar = 1),
where every rule reduces to "return the x0 prediction".

Classifier-free guidance (Ho & Salimans 2022, eq. 6) runs the network with and
without the caption and extrapolates: out = uncond + w (cond - uncond). w = 1
is the plain conditional model, w = 0 the unconditional one, w > 1 follows the
caption more closely at some cost in diversity. Because x0, eps and v are
affine in one another for fixed x_t, guiding any of them is the same.

Each x0 prediction may be clipped before the step uses it. Pixel images live
in [-1, 1], so clipping a prediction that overshoots ("static", the default)
keeps strong guidance from driving colours out of range; a latent space has
no such range ("none"). Static clipping flattens every overshooting pixel to
the same saturated value; "dynamic" thresholding (Imagen, Saharia et al. 2022,
sec. 2.3) instead scales a whole image back into range when it overshoots
(see `dynamic_threshold`), keeping the differences between its pixels.
"""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from minidiff.corruption import NoiseSchedule, network_time, x0_and_eps

SAMPLERS = ("ddpm", "ddim", "heun", "dpm++2m")
SECOND_ORDER = ("heun", "dpm++2m")
# What is done to each x0 prediction: clip to [-1, 1], scale each image back into range, or nothing.
X0_CLIPPINGS = ("static", "dynamic", "none")
DYNAMIC_THRESHOLD_PERCENTILE = 99.5  # Imagen's p (Saharia et al. 2022, sec. 2.3)


def check_shared_settings(sampler: str, num_steps: int, fewest: int, guidance_scale: float, x0_clipping: str) -> None:
    """The checks of every sampler, of diffusion (`check_settings`) or of a flow (`minidiff.flows`)."""
    if not isinstance(num_steps, (int, np.integer)) or num_steps < fewest:
        raise ValueError(f"{sampler} needs a whole number of steps of at least {fewest}, got {num_steps!r}")
    if not math.isfinite(guidance_scale):
        raise ValueError(f"the guidance scale must be a finite number (1 = none, 0 = ignore the caption), "
                         f"got {guidance_scale}")
    if x0_clipping not in X0_CLIPPINGS:
        raise ValueError(f"unknown x0 clipping {x0_clipping!r}: choose one of {X0_CLIPPINGS}")


def check_settings(sampler: str, num_steps: int, guidance_scale: float = 1.0, eta: float = 0.0,
                   x0_clipping: str = "static") -> None:
    """Raise a ValueError that says what is wrong with settings no sampler can run."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {SAMPLERS}")
    check_shared_settings(sampler, num_steps, 2 if sampler in SECOND_ORDER else 1, guidance_scale, x0_clipping)
    if not 0.0 <= eta <= 1.0:  # also false for NaN
        raise ValueError(f"eta must be between 0 (deterministic DDIM) and 1 (DDPM-like), got {eta}")


def check_rows(noise, token_ids, empty_ids) -> None:
    """One row of noise, caption ids and empty-caption ids per image, or a ValueError that says so."""
    if empty_ids.shape != token_ids.shape or noise.shape[0] != token_ids.shape[0]:
        raise ValueError(f"noise {noise.shape}, token_ids {token_ids.shape} and empty_ids {empty_ids.shape} must "
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


def function_evaluations(sampler: str, num_steps: int) -> int:
    """Network calls per image (NFE), of these samplers and of a flow's (`minidiff.flows`); guidance's two
    passes are batched into one call."""
    return 2 * num_steps - 1 if sampler == "heun" else num_steps  # Heun's last step is a plain Euler step


# --- Noise levels --------------------------------------------------------------------
#
# A noise level is an alpha_bar; the Karras et al. form of the same level is
# sigma = sqrt((1 - alpha_bar) / alpha_bar), the noise-to-signal ratio, so that
# x_t / sqrt(alpha_bar) = x0 + sigma eps.


# Plain arithmetic, so that numpy float64 in, float64 out (noise levels near
# alpha_bar = 1 need the precision); inside the jitted loop it acts on jax arrays.
def sigma_from_alpha_bar(alpha_bar):
    return ((1.0 - alpha_bar) / alpha_bar) ** 0.5


def alpha_bar_from_sigma(sigma):
    return 1.0 / (1.0 + sigma**2)


def timestep_sequence(num_train_steps: int, num_steps: int) -> np.ndarray:
    """`num_steps` step indices from T - 1 down to 0, evenly spaced."""
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"num_steps must be between 1 and {num_train_steps}, got {num_steps}")
    return np.round(np.linspace(num_train_steps - 1, 0, num_steps)).astype(np.int32)


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0) -> np.ndarray:
    """sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.

    Karras et al. 2022, eq. 5: evenly spaced in sigma^(1/rho), so with rho = 7
    most steps are spent at low noise, where the image's detail is decided.
    """
    ramp = np.linspace(0.0, 1.0, num_steps)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


# Karras et al. 2022 (Table 1) start their solvers at sigma = 80: beyond it an image
# is pure noise for any purpose, while the cosine schedule's last step reaches
# sigma ~ 20,000, and steps up there would be wasted.
SIGMA_MAX = 80.0


def noise_levels(schedule: NoiseSchedule, sampler: str, num_steps: int) -> np.ndarray:
    """The alpha_bar of each of the `num_steps` levels a sampler visits, noisiest first."""
    check_settings(sampler, num_steps)
    alpha_bar = np.asarray(schedule.alpha_bar, np.float64)
    if sampler not in SECOND_ORDER:
        return alpha_bar[timestep_sequence(schedule.num_steps, num_steps)]
    sigmas = sigma_from_alpha_bar(alpha_bar)
    return alpha_bar_from_sigma(karras_sigmas(sigmas[0], min(sigmas[-1], SIGMA_MAX), num_steps))


def step_index_of(schedule: NoiseSchedule, alpha_bar):
    """The (fractional) training step at which the schedule reaches this noise level.

    A noise level between two steps gets a fractional index, interpolated in
    log alpha_bar (as DPM-Solver does for discrete-time models); the network is
    then told `corruption.network_time` of it, as in training.
    """
    steps = jnp.arange(schedule.num_steps, dtype=jnp.float32)
    return jnp.interp(-jnp.log(alpha_bar), -jnp.log(schedule.alpha_bar), steps)


# --- Guidance -------------------------------------------------------------------------


def guided_output(model, xt, t, caption, empty_caption, guidance_scale, guided: bool):
    """The network output under classifier-free guidance (one batched call for both)."""
    if not guided:
        return model.denoise(xt, t, caption)
    both = jax.tree.map(lambda c, e: jnp.concatenate([c, e]), caption, empty_caption)
    out = model.denoise(jnp.concatenate([xt, xt]), jnp.concatenate([t, t]), both)
    conditional, unconditional = jnp.split(out, 2)
    return unconditional + guidance_scale * (conditional - unconditional)


# --- Update rules: one step from noise level t to a less noisy s ----------------------


def ddpm_step(key, xt, x0_pred, alpha_bar_t, alpha_bar_s):
    """Draw x_s ~ q(x_s | x_t, x0_pred), the Gaussian posterior (Ho et al. 2020, eqs. 6-7).

    Written for any earlier step s < t: with alpha_ts = alpha_bar_t / alpha_bar_s,
      mean = sqrt(alpha_bar_s) (1 - alpha_ts) / (1 - alpha_bar_t) x0
           + sqrt(alpha_ts) (1 - alpha_bar_s) / (1 - alpha_bar_t) x_t
      var  = (1 - alpha_ts) (1 - alpha_bar_s) / (1 - alpha_bar_t).
    """
    alpha_ts = alpha_bar_t / alpha_bar_s
    mean = (jnp.sqrt(alpha_bar_s) * (1 - alpha_ts) * x0_pred + jnp.sqrt(alpha_ts) * (1 - alpha_bar_s) * xt) / (
        1 - alpha_bar_t
    )
    variance = (1 - alpha_ts) * (1 - alpha_bar_s) / (1 - alpha_bar_t)
    return mean + jnp.sqrt(variance) * jax.random.normal(key, xt.shape)


def ddim_step(key, xt, x0_pred, eps_pred, alpha_bar_t, alpha_bar_s, eta):
    """x_s = sqrt(alpha_bar_s) x0 + sqrt(1 - alpha_bar_s - s^2) eps + s z (Song et al. 2021, eq. 12)

    with the step's noise s = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_s)
    (the paper's sigma_t; not Karras et al.'s sigma below, a noise level).
    """
    noise_std = eta * jnp.sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_s))
    direction = jnp.sqrt(jnp.maximum(1 - alpha_bar_s - noise_std**2, 0.0)) * eps_pred
    return jnp.sqrt(alpha_bar_s) * x0_pred + direction + noise_std * jax.random.normal(key, xt.shape)


# The second-order solvers work on x / sqrt(alpha_bar) = x0 + sigma eps (Karras et al.'s
# variable), where the probability-flow ODE is simply d(x / sqrt(alpha_bar)) / d sigma = eps.


def heun_step(denoise, xt, eps_pred, alpha_bar_t, alpha_bar_s):
    """One step of Heun's method (Karras et al. 2022, Algorithm 1, lines 5-8).

    A trial Euler step to sigma_s, a second network call there, then the step
    again with the average of the two slopes: error O(h^3) per step, not O(h^2).
    """
    sigma_t, sigma_s = sigma_from_alpha_bar(alpha_bar_t), sigma_from_alpha_bar(alpha_bar_s)
    scaled = xt / jnp.sqrt(alpha_bar_t)
    euler = scaled + (sigma_s - sigma_t) * eps_pred
    _, eps_at_s = denoise(jnp.sqrt(alpha_bar_s) * euler, alpha_bar_s)
    return jnp.sqrt(alpha_bar_s) * (scaled + (sigma_s - sigma_t) * 0.5 * (eps_pred + eps_at_s))


def dpm_solver_2m_step(xt, x0_pred, previous_x0, alpha_bar_t, alpha_bar_s, previous_h):
    """One step of DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2); returns (x_s, h).

    With lambda = -log sigma and h = lambda_s - lambda_t, the exact solution of the
    ODE in the scaled variable y = x / sqrt(alpha_bar) is y_s = (sigma_s / sigma_t) y_t
    + (1 - e^-h) x0 if x0 were constant over the step (that is DDIM). The 2M step instead extrapolates x0 linearly in lambda
    from the previous step's prediction: D = (1 + 1 / 2r) x0 - (1 / 2r) x0_previous,
    r = h_previous / h. On the first step (previous_h = 0) it is plain DDIM.
    """
    sigma_t, sigma_s = sigma_from_alpha_bar(alpha_bar_t), sigma_from_alpha_bar(alpha_bar_s)
    h = jnp.log(sigma_t / sigma_s)
    r = jnp.where(previous_h > 0, previous_h / h, 1.0)
    extrapolated = (1 + 0.5 / r) * x0_pred - (0.5 / r) * previous_x0
    data = jnp.where(previous_h > 0, extrapolated, x0_pred)
    scaled = (sigma_s / sigma_t) * (xt / jnp.sqrt(alpha_bar_t)) - jnp.expm1(-h) * data
    return jnp.sqrt(alpha_bar_s) * scaled, h


# --- The loop -------------------------------------------------------------------------


@partial(nnx.jit, static_argnames=("sampler", "guided", "x0_clipping", "keep_trajectory"))
def _sample_loop(
    model, schedule: NoiseSchedule, levels, token_ids, empty_ids, low_res_condition, key, noise, guidance_scale, eta,
    sampler: str, guided: bool, x0_clipping: str, keep_trajectory: bool,
):
    # Once, reused at every step; an upscaler's low-res image goes with the caption and without it alike.
    caption = (*model.encode_captions(token_ids), *low_res_condition)
    empty_caption = (*model.encode_captions(empty_ids), *low_res_condition)
    batch = noise.shape[0]

    def denoise(x, alpha_bar):
        """(x0_pred, eps_pred) at noise level alpha_bar, guided, with x0 clipped as asked."""
        time = jnp.full((batch,), network_time(step_index_of(schedule, alpha_bar), schedule.num_steps))
        output = guided_output(model, x, time, caption, empty_caption, guidance_scale, guided)
        x0_pred, eps_pred = x0_and_eps(model.config.prediction, output, x, jnp.full((batch,), alpha_bar))
        if x0_clipping != "none":
            # Bring the prediction into the image range and recompute eps to match it.
            x0_pred = jnp.clip(x0_pred, -1.0, 1.0) if x0_clipping == "static" else dynamic_threshold(x0_pred)
            eps_pred = (x - jnp.sqrt(alpha_bar) * x0_pred) / jnp.sqrt(1 - alpha_bar)
        return x0_pred, eps_pred

    def one_step(carry, level_pair):
        x, key, previous_x0, previous_h = carry
        alpha_bar_t, alpha_bar_s = level_pair
        key, step_key = jax.random.split(key)
        x0_pred, eps_pred = denoise(x, alpha_bar_t)
        h = previous_h
        if sampler == "ddpm":
            x = ddpm_step(step_key, x, x0_pred, alpha_bar_t, alpha_bar_s)
        elif sampler == "ddim":
            x = ddim_step(step_key, x, x0_pred, eps_pred, alpha_bar_t, alpha_bar_s, eta)
        elif sampler == "heun":
            x = heun_step(denoise, x, eps_pred, alpha_bar_t, alpha_bar_s)
        else:
            x, h = dpm_solver_2m_step(x, x0_pred, previous_x0, alpha_bar_t, alpha_bar_s, previous_h)
        return (x, key, x0_pred, h), (x0_pred if keep_trajectory else None)

    start = (noise, key, jnp.zeros_like(noise), jnp.float32(0.0))
    (x, _, _, _), trajectory = jax.lax.scan(one_step, start, (levels[:-1], levels[1:]))
    # The last step lands on the clean image: every rule above returns x0_pred there.
    x0_pred, _ = denoise(x, levels[-1])
    if keep_trajectory:
        trajectory = jnp.concatenate([trajectory, x0_pred[None]])
    return x0_pred, trajectory


def sample(
    model,
    schedule: NoiseSchedule,
    noise,
    token_ids,
    empty_ids,
    key=None,
    *,
    num_steps: int = 50,
    sampler: str = "ddim",
    eta: float = 0.0,
    guidance_scale: float = 1.0,
    x0_clipping: str = "static",
    keep_trajectory: bool = False,
    low_res_condition=(),
):
    """Denoise `noise` (B, H, W, C), pure Gaussian noise, into one image per caption; (B, H, W, C).

    token_ids (B, L) are the captions, empty_ids (B, L) the "no caption" ids
    (`Tokenizer.empty(B)`), used for guidance. `key` drives the fresh noise of
    DDPM and of DDIM with eta > 0 (the other samplers are deterministic).
    `eta` applies to DDIM only. With keep_trajectory, also returns the x0
    prediction at every step, (num_steps, B, H, W, C). One compilation per
    (batch shape, num_steps, sampler). The arrays stay where the caller put
    them: rows split over devices, with the model replicated on them, are
    sampled there (`minidiff.generator.Generator` does that). An upscaler
    takes its `low_res_condition` too (`minidiff.superres.low_res_condition`).
    """
    check_settings(sampler, num_steps, guidance_scale, eta, x0_clipping)
    check_rows(noise, token_ids, empty_ids)
    levels = jnp.asarray(noise_levels(schedule, sampler, num_steps), jnp.float32)
    key = jax.random.key(0) if key is None else key
    images, trajectory = _sample_loop(
        model, schedule, levels, token_ids, empty_ids, tuple(low_res_condition), key, noise,
        jnp.float32(guidance_scale), jnp.float32(eta),
        sampler=sampler, guided=guidance_scale != 1.0, x0_clipping=x0_clipping, keep_trajectory=keep_trajectory,
    )
    return (images, trajectory) if keep_trajectory else images
