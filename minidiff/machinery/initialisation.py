"""Building a module with random parameters, in one compiled program.

Built eagerly, every random initialiser a Flax module declares (LeCun-normal
kernels, zero biases, a zero last convolution, normal embeddings...) runs as
its own small XLA program, compiled anew for each parameter shape: tens of
seconds for a model on a CPU. Built inside `nnx.jit`, the whole construction is
one program, compiled once per (module, config) in a process, and kept on disk
by the persistent compilation cache for the next one. The modules' own
declarations stay the only statement of how each parameter starts.
"""

from functools import cache

import jax
from flax import nnx


@cache
def _construction(module_class, config):
    """`module_class(config, rngs=...)` as a compiled function of the random key."""
    return nnx.jit(lambda key: module_class(config, rngs=nnx.Rngs(key)))


def initialised(module_class, config, seed: int = 0):
    """A new `module_class(config, rngs=nnx.Rngs(seed))`, built in one compiled program.

    `config` must be hashable (the configs are frozen dataclasses)."""
    return _construction(module_class, config)(jax.random.key(seed))


def shapes_only(module_class, config):
    """`module_class(config, ...)` with every parameter a shape and no value, computing nothing:
    the frame a checkpoint's arrays are loaded into (`Checkpoint.restore`)."""
    return nnx.eval_shape(lambda: module_class(config, rngs=nnx.Rngs(0)))
