"""A training step compiled once and called on a flat list of arrays, not on modules.

`nnx.jit(step)` would compile the same program, but on every call it walks the
Python object graph of its modules (model, optimizer, EMA) to collect their
arrays, and again to write the results back; in a short step that host time
rivals the step itself. So the modules are split once into their structure
(`graphdef`) and their arrays (Flax's "functional training loop"), and the
arrays flattened into one list: each call hands only that list to a compiled
program and gets the new list back. The structure is baked into the program
rather than passed as a static argument, which jax.jit would hash on every
call. The arrays are donated: XLA writes the new weights and optimizer moments
over the old ones instead of allocating a second copy every step.

The modules see the new arrays only after `sync()`; in between, the arrays
they hold have been donated (deleted). Sync before reading them.
"""

from functools import cache

import jax
from flax import nnx


@cache
def compile_on_arrays(step, graphdef, treedef, static):
    """`step(*modules, *inputs, static)` as a compiled pure function of the modules' arrays:
    (arrays, *inputs) -> (new arrays, step's result).

    One program per (step, structure, static), shared by every caller in this
    process (hence the cache): runs with equal settings are not traced again."""

    def step_on_arrays(arrays, *inputs):
        modules = nnx.merge(graphdef, jax.tree.unflatten(treedef, arrays))
        result = step(*modules, *inputs, static)
        new_arrays, new_treedef = jax.tree.flatten(nnx.state(modules))
        assert new_treedef == treedef, "the step changed the modules' structure"
        return new_arrays, result

    return jax.jit(step_on_arrays, donate_argnums=0)


class CompiledStep:
    """`step(*modules, *inputs, static)`, which updates `modules` in place, run on their arrays."""

    def __init__(self, step, modules: tuple, static):
        self.modules = modules
        graphdef, state = nnx.split(modules)
        self.arrays, self.treedef = jax.tree.flatten(state)
        self.program = compile_on_arrays(step, graphdef, self.treedef, static)

    def __call__(self, *inputs):
        """One step on the current arrays; returns the step's result (on the device)."""
        self.arrays, result = self.program(self.arrays, *inputs)
        return result

    def sync(self):
        """Put the current arrays back into the modules."""
        nnx.update(self.modules, jax.tree.unflatten(self.treedef, self.arrays))

    def reload(self):
        """Take the modules' arrays again, after something other than the step changed them."""
        self.arrays = jax.tree.leaves(nnx.state(self.modules))
