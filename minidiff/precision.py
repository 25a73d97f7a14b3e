"""Mixed precision: compute in bfloat16, keep the weights in float32.

Mixed precision (Micikevicius et al. 2018): the optimizer keeps and updates
float32 weights (small updates would vanish in bfloat16's 8-bit mantissa),
while the forward and backward passes run on bfloat16 copies — half the
memory traffic, and the fast matrix units of GPUs and TPUs. The training loop
(`minidiff.loop`) makes the copy inside the differentiated function, so the
cast passes gradients back to the float32 weights; each loss casts its inputs
to the compute type it is given, and its result back to float32.
"""

import jax
import jax.numpy as jnp
from flax import nnx

PRECISIONS = ("float32", "bfloat16")


def compute_dtype(precision: str):
    """The type a forward pass computes in under `precision` (one of PRECISIONS)."""
    return jnp.bfloat16 if precision == "bfloat16" else jnp.float32


def in_bfloat16(module: nnx.Module) -> nnx.Module:
    """A copy of `module` whose floating-point parameters are bfloat16."""
    graphdef, state = nnx.split(module)
    state = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    return nnx.merge(graphdef, state)
