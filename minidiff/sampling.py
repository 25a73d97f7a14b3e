"""Stage 4 — sampling: start from pure noise and denoise step by step.

Every sampler here is the same loop — ask the network what the clean image
looks like, then take one step from x_t to a less noisy x_s — with a different
update rule for the step:

  - DDPM ancestral sampling (Ho et al. 2020, Algorithm 2): draw x_s from the
    true posterior q(x_s | x_t, x0) with x0 replaced by its prediction.
  - DDIM (Song et al. 2021, eq. 12): a family indexed by eta; eta = 0 is
    deterministic (an ODE), eta = 1 recovers DDPM's posterior.

Either can skip steps: the loop visits `num_steps` of the T training steps,
evenly spaced (Nichol & Dhariwal 2021, sec. 4), and the update rules are
written for any pair t > s.

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

from minidiff.corruption import NoiseSchedule, continuous_time, x0_and_eps

SAMPLERS = ("ddpm", "ddim")


def timestep_sequence(num_train_steps: int, num_steps: int) -> np.ndarray:
    """`num_steps` step indices from T - 1 down to 0, evenly spaced."""
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"num_steps must be between 1 and {num_train_steps}, got {num_steps}")
    return np.round(np.linspace(num_train_steps - 1, 0, num_steps)).astype(np.int32)


def guided_output(model, xt, t, caption, empty_caption, guidance_scale, guided: bool):
    """The network output under classifier-free guidance (one batched call for both)."""
    if not guided:
        return model.denoise(xt, t, caption)
    both = jax.tree.map(lambda c, e: jnp.concatenate([c, e]), caption, empty_caption)
    out = model.denoise(jnp.concatenate([xt, xt]), jnp.concatenate([t, t]), both)
    conditional, unconditional = jnp.split(out, 2)
    return unconditional + guidance_scale * (conditional - unconditional)


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


STEP_RULES = {"ddpm": ddpm_step, "ddim": ddim_step}


@partial(nnx.jit, static_argnames=("sampler", "guided", "keep_trajectory"))
def _sample_loop(
    model, schedule: NoiseSchedule, timesteps, token_ids, empty_ids, key, noise, guidance_scale, eta,
    sampler: str, guided: bool, keep_trajectory: bool,
):
    prediction = model.config.prediction
    num_train_steps = schedule.num_steps
    caption = model.encode_captions(token_ids)  # once, reused at every step
    empty_caption = model.encode_captions(empty_ids)
    update = STEP_RULES[sampler]
    # Pair each step t with the next one s; after the last, s = -1 means "clean" (alpha_bar = 1).
    next_timesteps = jnp.concatenate([timesteps[1:], jnp.array([-1], timesteps.dtype)])

    def one_step(carry, ts):
        x, key = carry
        t, s = ts
        key, step_key = jax.random.split(key)
        batch = x.shape[0]
        alpha_bar_t = schedule.alpha_bar[t]
        alpha_bar_s = jnp.where(s >= 0, schedule.alpha_bar[jnp.maximum(s, 0)], 1.0)
        time = jnp.full((batch,), continuous_time(t, num_train_steps))
        output = guided_output(model, x, time, caption, empty_caption, guidance_scale, guided)
        x0_pred, eps_pred = x0_and_eps(prediction, output, x, jnp.full((batch,), alpha_bar_t))
        # Images live in [-1, 1]: clip the prediction and recompute eps to match it.
        x0_pred = jnp.clip(x0_pred, -1.0, 1.0)
        eps_pred = (x - jnp.sqrt(alpha_bar_t) * x0_pred) / jnp.sqrt(1 - alpha_bar_t)
        x = update(step_key, x, x0_pred, eps_pred, alpha_bar_t, alpha_bar_s, eta)
        return (x, key), (x0_pred if keep_trajectory else None)

    (x, _), trajectory = jax.lax.scan(one_step, (noise, key), (timesteps, next_timesteps))
    return x, trajectory


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
):
    """Generate one image per row of `token_ids` (B, L); returns (B, H, W, C) in [-1, 1].

    `empty_ids` are the "no caption" ids (`Tokenizer.empty`), used for guidance.
    With keep_trajectory, also returns the x0 prediction at every step,
    (num_steps, B, H, W, C). One compilation per (batch shape, num_steps, sampler).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {SAMPLERS}")
    config = model.config.unet
    token_ids = jnp.asarray(token_ids)
    batch = token_ids.shape[0]
    empty_ids = jnp.broadcast_to(jnp.asarray(empty_ids)[:1], token_ids.shape)
    noise_key, loop_key = jax.random.split(jax.random.key(seed))
    noise = jax.random.normal(noise_key, (batch, config.image_size, config.image_size, config.channels))
    timesteps = jnp.asarray(timestep_sequence(schedule.num_steps, num_steps))
    images, trajectory = _sample_loop(
        model, schedule, timesteps, token_ids, empty_ids, loop_key, noise,
        jnp.float32(guidance_scale), jnp.float32(eta),
        sampler=sampler, guided=guidance_scale != 1.0, keep_trajectory=keep_trajectory,
    )
    return (images, trajectory) if keep_trajectory else images
