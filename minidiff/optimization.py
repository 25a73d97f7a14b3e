"""Optimisation: AdamW, at a learning rate that follows the run's progress.

The training step takes its learning rate as an input, worked out before
each step from the fraction of the run done (`learning_rate_at`), rather than
from a schedule over the optimizer's own step count: a run with a budget of
minutes (`minidiff.loop.TrainConfig.minutes`) knows how far along it is only by the clock,
not by a number of steps fixed up front.
"""

import math
from functools import cache

import jax
import optax


def learning_rate_at(progress: float, peak: float, warmup: float, end_fraction: float = 0.1) -> float:
    """The learning rate once a fraction `progress` (0 to 1) of the run is done.

    A linear warm-up from 0 over the first `warmup` of the run (Adam's moment
    estimates are noisy over the first steps, and a full step on them can
    throw the network far off; Goyal et al. 2017), then a half cosine from
    `peak` down to `end_fraction * peak` at the end (Loshchilov & Hutter 2017).
    A run of N steps is at progress step / N; a run of M minutes, at time
    trained / M.
    """
    end = end_fraction * peak
    if progress < warmup:
        return peak * progress / warmup
    decayed = min(1.0, (progress - warmup) / (1.0 - warmup))  # 0 to 1 over the rest of the run
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * decayed))


def scale_by_given_learning_rate() -> optax.GradientTransformationExtraArgs:
    """Multiply each update by the `learning_rate` passed to that update
    (`nnx.Optimizer.update(model, grads, learning_rate=...)` hands it on)."""

    def update(updates, state, params=None, *, learning_rate, **extra_args):
        return jax.tree.map(lambda u: learning_rate * u, updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


@cache
def adamw(weight_decay: float, grad_clip: float) -> optax.GradientTransformationExtraArgs:
    """AdamW (Loshchilov & Hutter 2019) with gradient clipping, at the learning rate given to each update.

    `optax.adamw` at rate 1 gives -(Adam's step + weight_decay * w); scaled by
    the rate, that is AdamW at that rate. One object per setting (hence the
    cache): the optimizer keeps it in its static structure, so a run with a
    new but equal one would look like a new program to the compiled step and
    be traced again."""
    return optax.chain(
        optax.clip_by_global_norm(grad_clip),
        optax.adamw(1.0, weight_decay=weight_decay),
        scale_by_given_learning_rate(),
    )
