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
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from minidiff.corruption import NoiseSchedule, x0_and_eps
from minidiff.sharding import gather_on_one_device, replicate, shard_batch

SAMPLERS = ("ddpm", "ddim", "heun", "dpm++2m")
SECOND_ORDER = ("heun", "dpm++2m")


def function_evaluations(sampler: str, num_steps: int) -> int:
    """Network calls per image (NFE); guidance's two passes are batched into one call."""
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
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {SAMPLERS}")
    alpha_bar = np.asarray(schedule.alpha_bar, np.float64)
    if sampler not in SECOND_ORDER:
        return alpha_bar[timestep_sequence(schedule.num_steps, num_steps)]
    if num_steps < 2:
        raise ValueError(f"{sampler} needs at least 2 steps, got {num_steps}")
    sigmas = sigma_from_alpha_bar(alpha_bar)
    return alpha_bar_from_sigma(karras_sigmas(sigmas[0], min(sigmas[-1], SIGMA_MAX), num_steps))


def network_time(schedule: NoiseSchedule, alpha_bar):
    """The time input (in (0, 1]) at which the network saw this noise level in training.

    Step t of T was shown as (t + 1) / T (`continuous_time`); noise levels between
    two steps get a fractional t, interpolated in log alpha_bar (as DPM-Solver does
    for discrete-time models).
    """
    steps = jnp.arange(schedule.num_steps, dtype=jnp.float32)
    t = jnp.interp(-jnp.log(alpha_bar), -jnp.log(schedule.alpha_bar), steps)
    return (t + 1.0) / schedule.num_steps


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


def ddpm_step(key, xt, x0_pred, eps_pred, alpha_bar_t, alpha_bar_s, eta):
    """Draw x_s ~ q(x_s | x_t, x0_pred), the Gaussian posterior (Ho et al. 2020, eqs. 6-7).

    Written for any earlier step s < t: with alpha_ts = alpha_bar_t / alpha_bar_s,
      mean = sqrt(alpha_bar_s) (1 - alpha_ts) / (1 - alpha_bar_t) x0
           + sqrt(alpha_ts) (1 - alpha_bar_s) / (1 - alpha_bar_t) x_t
      var  = (1 - alpha_ts) (1 - alpha_bar_s) / (1 - alpha_bar_t).
    """
    del eps_pred, eta
    alpha_ts = alpha_bar_t / alpha_bar_s
    mean = (jnp.sqrt(alpha_bar_s) * (1 - alpha_ts) * x0_pred + jnp.sqrt(alpha_ts) * (1 - alpha_bar_s) * xt) / (
        1 - alpha_bar_t
    )
    variance = (1 - alpha_ts) * (1 - alpha_bar_s) / (1 - alpha_bar_t)
    return mean + jnp.sqrt(variance) * jax.random.normal(key, xt.shape)


def ddim_step(key, xt, x0_pred, eps_pred, alpha_bar_t, alpha_bar_s, eta):
    """x_s = sqrt(alpha_bar_s) x0 + sqrt(1 - alpha_bar_s - sigma^2) eps + sigma z (Song et al. 2021, eq. 12)

    with sigma = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_s).
    """
    sigma = eta * jnp.sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_s))
    direction = jnp.sqrt(jnp.maximum(1 - alpha_bar_s - sigma**2, 0.0)) * eps_pred
    return jnp.sqrt(alpha_bar_s) * x0_pred + direction + sigma * jax.random.normal(key, xt.shape)


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


@partial(nnx.jit, static_argnames=("sampler", "guided", "keep_trajectory"))
def _sample_loop(
    model, schedule: NoiseSchedule, levels, token_ids, empty_ids, key, noise, guidance_scale, eta,
    sampler: str, guided: bool, keep_trajectory: bool,
):
    caption = model.encode_captions(token_ids)  # once, reused at every step
    empty_caption = model.encode_captions(empty_ids)
    batch = noise.shape[0]

    def denoise(x, alpha_bar):
        """(x0_pred, eps_pred) at noise level alpha_bar, guided, with x0 clipped to the image range."""
        time = jnp.full((batch,), network_time(schedule, alpha_bar))
        output = guided_output(model, x, time, caption, empty_caption, guidance_scale, guided)
        x0_pred, _ = x0_and_eps(model.config.prediction, output, x, jnp.full((batch,), alpha_bar))
        # Images live in [-1, 1]: clip the prediction and recompute eps to match it.
        x0_pred = jnp.clip(x0_pred, -1.0, 1.0)
        return x0_pred, (x - jnp.sqrt(alpha_bar) * x0_pred) / jnp.sqrt(1 - alpha_bar)

    def one_step(carry, level_pair):
        x, key, previous_x0, previous_h = carry
        alpha_bar_t, alpha_bar_s = level_pair
        key, step_key = jax.random.split(key)
        x0_pred, eps_pred = denoise(x, alpha_bar_t)
        h = previous_h
        if sampler == "ddpm":
            x = ddpm_step(step_key, x, x0_pred, eps_pred, alpha_bar_t, alpha_bar_s, eta)
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
    token_ids,
    empty_ids,
    seed: int = 0,
    *,
    num_steps: int = 50,
    sampler: str = "ddim",
    eta: float = 0.0,
    guidance_scale: float = 1.0,
    keep_trajectory: bool = False,
    mesh=None,
):
    """Generate one image per row of `token_ids` (B, L); returns (B, H, W, C) in [-1, 1].

    `empty_ids` are the "no caption" ids (`Tokenizer.empty`), used for guidance.
    `eta` applies to DDIM only. With keep_trajectory, also returns the x0
    prediction at every step, (num_steps, B, H, W, C). One compilation per
    (batch shape, num_steps, sampler). With a `mesh` (`minidiff.sharding.mesh_for_batch`),
    the rows are split over its devices and the model is replicated on them
    (in place); the images are the same. Without one, the model is gathered
    onto one device (in place) if it was replicated.
    """
    levels = jnp.asarray(noise_levels(schedule, sampler, num_steps), jnp.float32)
    config = model.config.unet
    token_ids = jnp.asarray(token_ids)
    batch = token_ids.shape[0]
    empty_ids = jnp.broadcast_to(jnp.asarray(empty_ids)[:1], token_ids.shape)
    noise_key, loop_key = jax.random.split(jax.random.key(seed))
    noise = jax.random.normal(noise_key, (batch, config.image_size, config.image_size, config.channels))
    if mesh is not None:
        replicate(model, mesh)
        token_ids, empty_ids, noise = (shard_batch(np.asarray(rows), mesh) for rows in (token_ids, empty_ids, noise))
    else:
        gather_on_one_device(model)  # in case an earlier call replicated it
    images, trajectory = _sample_loop(
        model, schedule, levels, token_ids, empty_ids, loop_key, noise,
        jnp.float32(guidance_scale), jnp.float32(eta),
        sampler=sampler, guided=guidance_scale != 1.0, keep_trajectory=keep_trajectory,
    )
    return (images, trajectory) if keep_trajectory else images
