"""Data parallelism with JAX's own sharding: one mesh over every device, the batch split across it.

    devices:     [ d0 ][ d1 ][ d2 ][ d3 ]        a Mesh with one axis, "data"
    parameters:  [ P  ][ P  ][ P  ][ P  ]        replicated: every device holds all of them
    batch:       [b0-7][b8-15][...][...]         sharded: each device holds a quarter of the rows

Nothing else changes: the same jitted train step is compiled for these input
shardings, and XLA inserts the communication itself — the loss is a mean over
the batch, so the gradient of every replicated parameter is summed across
devices (an all-reduce) before the optimizer update, which then runs
identically everywhere. The result equals single-device training on the same
global batch (the tests check this on 4 simulated CPU devices).

Several hosts (a TPU pod slice, GPU nodes): call `initialize_distributed()`
first on every host; the mesh then spans all hosts' devices, and each host
feeds only its own rows of every global batch (`shard_batch`).

The same idea speeds up a laptop: XLA:CPU runs each convolution on about one
core, so JAX's single CPU device leaves the other cores idle. Split into one
device per core (`one_device_per_cpu_core`), with the batch sharded over
them, every core works (`minidiff train` does this by itself).
"""

import os

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed() -> None:
    """Join a multi-host run: on clusters JAX recognises (Cloud TPU, SLURM, ...) it finds the
    coordinator itself; elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"], int(os.environ["JAX_NUM_PROCESSES"]),
                                   int(os.environ["JAX_PROCESS_ID"]))
    else:
        jax.distributed.initialize()


def _cpu_cores() -> int:
    """The cores this process may run on (all of them where the OS cannot say, as on macOS)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def one_device_per_cpu_core() -> int:
    """Make JAX present the CPU as one device per core; returns the number of CPU devices.

    XLA:CPU runs a convolution on about one core, so with the batch split over
    one device per core, every core works (docs/speed.md has the measurements).
    The device count is fixed when JAX starts, so call this before JAX computes
    anything; afterwards, or where the count was chosen already
    ($JAX_NUM_CPU_DEVICES, or --xla_force_host_platform_device_count in
    $XLA_FLAGS), it changes nothing. GPUs and TPUs are unaffected: they stay
    the default devices.
    """
    chosen = "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    if not chosen and jax.config.jax_num_cpu_devices < 1:
        try:
            jax.config.update("jax_num_cpu_devices", _cpu_cores())
        except RuntimeError:  # JAX has started: its devices are fixed
            pass
    return len(jax.devices("cpu"))


def data_mesh(devices=None) -> Mesh:
    """A one-axis mesh over the given devices (default: every device of every host)."""
    return Mesh(np.array(devices if devices is not None else jax.devices()), (DATA_AXIS,))


def mesh_for_batch(batch_size: int) -> Mesh | None:
    """A mesh over as many of this host's devices as split `batch_size` evenly; None if that is one."""
    devices = jax.local_devices()
    count = max(n for n in range(1, len(devices) + 1) if batch_size % n == 0)
    return data_mesh(devices[:count]) if count > 1 else None


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    if batch_size % mesh.size:
        raise ValueError(f"the batch ({batch_size}) must split evenly over {mesh.size} devices: "
                         f"use a multiple of {mesh.size}")


def replicate(module: nnx.Module, mesh: Mesh) -> None:
    """Place every array of `module` (parameters, optimizer moments, ...) on all devices, in place."""
    everywhere = NamedSharding(mesh, PartitionSpec())
    nnx.update(module, jax.device_put(nnx.state(module), everywhere))


def replicated(arrays, mesh: Mesh):
    """The arrays (any pytree) copied onto every device of the mesh."""
    return jax.device_put(arrays, NamedSharding(mesh, PartitionSpec()))


def gather_on_one_device(module: nnx.Module) -> None:
    """Undo `replicate`: move every array of `module` onto this host's first device, in place.

    A jitted call runs wherever its inputs live, so a module left replicated on
    four devices, called on an unsharded batch, would compute that batch four
    times over (the same result, four times the work)."""
    if any(len(leaf.sharding.device_set) > 1 for leaf in jax.tree.leaves(nnx.state(module))):
        nnx.update(module, jax.device_put(nnx.state(module), jax.local_devices()[0]))


def shard_batch(global_batch: np.ndarray, mesh: Mesh) -> jax.Array:
    """Split a batch's rows over the mesh. On a mesh over several hosts, every host computes the
    same global batch (batches are a pure function of seed and step) and contributes only the
    rows of its own devices."""
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    if all(device.process_index == jax.process_index() for device in mesh.devices.flat):  # this host's mesh
        return jax.device_put(global_batch, sharding)
    rows = len(global_batch) // jax.process_count()
    start = jax.process_index() * rows
    return jax.make_array_from_process_local_data(sharding, global_batch[start : start + rows], global_batch.shape)
