"""The machinery of a run: what makes training and sampling fast and safe, not what they compute.

    atomic.py          files that are complete under their final name, or absent
    checkpoints.py     a run's arrays in one .npz with a JSON header, written and read back
    compilation.py     JAX's persistent compilation cache
    compiled_step.py   a training step compiled once and called on a flat list of arrays
    initialisation.py  building a module with random parameters, fast
    sharding.py        data parallelism over devices and hosts with JAX's own sharding

Nothing here imports a stage, the model or training: they import this.
"""
