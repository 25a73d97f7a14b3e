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

Sampling integrates the ODE backwards from t = 1 in equal steps of t: Euler
(one network call per step) or Heun (a trial Euler step, then the average of
the slopes at both ends; two calls, counted as `sampling.function_evaluations`
counts them). A flow is diffusion in other clothes:
x_t / (1 - t) = x0 + sigma eps with sigma = t / (1 - t), Karras et al.'s
variable, so a flow is a diffusion model with another schedule and another
output: x_t / sqrt((1 - t)^2 + t^2) is a variance-preserving x_t with
alpha_bar = (1 - t)^2 / ((1 - t)^2 + t^2), and in those coordinates an Euler
step on the straight path is exactly a DDIM step (`sampling.ddim_step`) with
the same x0 prediction. What differs is what the network is asked to learn,
and which paths the ODE's solutions take.
Classifier-free guidance and clipping of the x0 prediction work as in
`minidiff.sampling`: the velocity, x0 and eps are affine in one another for a
fixed x_t.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from minidiff.sampling import check_rows, check_shared_settings, dynamic_threshold, guided_output

VELOCITY = "velocity"  # what a flow's network predicts: eps - x0
FLOW_SAMPLERS = ("euler", "heun")
TIME_SAMPLINGS = ("logit_normal", "uniform")


def interpolate(x0, eps, t):
    """x_t = (1 - t) x0 + t eps, the straight path; t has shape (B,)."""
    t = t.reshape(-1, 1, 1, 1)
    return (1 - t) * x0 + t * eps


def velocity_target(x0, eps):
    """dx_t/dt along the straight path: what the network regresses."""
    return eps - x0


def x0_and_eps_from_velocity(xt, velocity, t):
    """Back from a velocity at x_t to (x0, eps): x_t = (1 - t) x0 + t eps and v = eps - x0."""
    t = jnp.asarray(t).reshape(-1, 1, 1, 1)
    return xt - t * velocity, xt + (1 - t) * velocity


def sample_times(key, batch: int, how: str = "logit_normal"):
    """t in (0, 1) for each of `batch` images: logit-normal (Esser et al. 2024, eq. 19, m = 0, s = 1) or uniform."""
    if how == "logit_normal":
        return jax.nn.sigmoid(jax.random.normal(key, (batch,)))
    if how == "uniform":
        return jax.random.uniform(key, (batch,))
    raise ValueError(f"unknown time sampling {how!r}: choose one of {TIME_SAMPLINGS}")


def flow_loss(model, x0, token_ids, key, time_sampling: str = "logit_normal", dtype=jnp.float32,
              low_res_condition=()):
    """The flow-matching loss on one batch: the mean squared error of the predicted velocity.

    x0 (B, H, W, C) in [-1, 1], token_ids (B, L); the network runs on x_t in `dtype`
    (bfloat16 under mixed precision, with `model` cast by the caller). An upscaler is also shown
    its low-res image and that image's noise level (`minidiff.superres.training_condition`)."""
    t_key, eps_key = jax.random.split(key)
    t = sample_times(t_key, x0.shape[0], time_sampling)
    eps = jax.random.normal(eps_key, x0.shape)
    output = model(interpolate(x0, eps, t).astype(dtype), t, token_ids, *low_res_condition).astype(jnp.float32)
    return jnp.mean((output - velocity_target(x0, eps)) ** 2)


# --- Sampling ---------------------------------------------------------------------------


def check_settings(sampler: str, num_steps: int, guidance_scale: float = 1.0, x0_clipping: str = "static") -> None:
    """Raise a ValueError that says what is wrong with settings no flow sampler can run."""
    if sampler not in FLOW_SAMPLERS:
        raise ValueError(f"a flow model samples with one of {FLOW_SAMPLERS}, not {sampler!r}")
    check_shared_settings(sampler, num_steps, 1, guidance_scale, x0_clipping)


def time_grid(num_steps: int) -> np.ndarray:
    """The times a sampler visits: 1 (pure noise) down to 0 (the image) in equal steps; num_steps + 1 values."""
    return np.linspace(1.0, 0.0, num_steps + 1)


def euler_step(x, velocity, t, s):
    """x_s = x_t + (s - t) v(x_t, t): follow the current velocity for the whole step."""
    return x + (s - t) * velocity


def heun_step(velocity_at, x, velocity, t, s):
    """A trial Euler step to s, the velocity there, then the step again with the average of the two
    (Heun's method; Karras et al. 2022, Algorithm 1, in t rather than sigma). Error O(h^3) per step."""
    trial = euler_step(x, velocity, t, s)
    return x + (s - t) * 0.5 * (velocity + velocity_at(trial, s))


@partial(nnx.jit, static_argnames=("sampler", "guided", "x0_clipping", "keep_trajectory"))
def _sample_loop(model, times, token_ids, empty_ids, low_res_condition, noise, guidance_scale, sampler: str,
                 guided: bool, x0_clipping: str, keep_trajectory: bool):
    # Once, reused at every step; an upscaler's low-res image goes with the caption and without it alike.
    caption = (*model.encode_captions(token_ids), *low_res_condition)
    empty_caption = (*model.encode_captions(empty_ids), *low_res_condition)
    batch = noise.shape[0]

    def velocity_at(x, t):
        """The guided velocity at (x, t), with its x0 prediction clipped as asked; also that x0 (t > 0)."""
        velocity = guided_output(model, x, jnp.full((batch,), t), caption, empty_caption, guidance_scale, guided)
        x0_pred, _ = x0_and_eps_from_velocity(x, velocity, t)
        if x0_clipping != "none":
            x0_pred = jnp.clip(x0_pred, -1.0, 1.0) if x0_clipping == "static" else dynamic_threshold(x0_pred)
            velocity = (x - x0_pred) / t  # the velocity that leads to the clipped x0
        return velocity, x0_pred

    def one_step(x, time_pair):
        t, s = time_pair
        velocity, x0_pred = velocity_at(x, t)
        if sampler == "heun":
            x = heun_step(lambda y, u: velocity_at(y, u)[0], x, velocity, t, s)
        else:
            x = euler_step(x, velocity, t, s)
        return x, (x0_pred if keep_trajectory else None)

    x, trajectory = jax.lax.scan(one_step, noise, (times[:-2], times[1:-1]))
    # The last step lands on t = 0, where an Euler step from t gives x - t v, the x0 prediction itself.
    _, x0_pred = velocity_at(x, times[-2])
    if keep_trajectory:
        trajectory = jnp.concatenate([trajectory, x0_pred[None]])
    return x0_pred, trajectory


def sample(model, noise, token_ids, empty_ids, key=None, *, num_steps: int = 50, sampler: str = "euler",
           guidance_scale: float = 1.0, x0_clipping: str = "static", keep_trajectory: bool = False,
           low_res_condition=()):
    """Integrate a flow model's ODE from `noise` (B, H, W, C) at t = 1 to images at t = 0; (B, H, W, C).

    The same interface as `minidiff.sampling.sample`, without a noise schedule (the path is the
    straight line) or eta (both samplers are deterministic; `key` is accepted and unused). With
    keep_trajectory, also returns the x0 prediction at every step, (num_steps, B, H, W, C). An upscaler
    takes its `low_res_condition` too (`minidiff.superres.low_res_condition`).
    """
    del key  # an ODE solver draws no noise
    check_settings(sampler, num_steps, guidance_scale, x0_clipping)
    check_rows(noise, token_ids, empty_ids)
    images, trajectory = _sample_loop(
        model, jnp.asarray(time_grid(num_steps), jnp.float32), token_ids, empty_ids, tuple(low_res_condition), noise,
        jnp.float32(guidance_scale), sampler=sampler, guided=guidance_scale != 1.0, x0_clipping=x0_clipping,
        keep_trajectory=keep_trajectory,
    )
    return (images, trajectory) if keep_trajectory else images
