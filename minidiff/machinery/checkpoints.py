"""Checkpoints: every array in one .npz file, plus a JSON header. No pickle.

A training run's checkpoint (`minidiff.loop.save_run`) holds the model's
parameters, their EMA, the optimizer state, the step, the configs and what
the run's task records (a tokenizer's vocabulary, the recipe) — everything
needed to sample, or to resume training exactly where it stopped. `np.load`
with `allow_pickle=False` reads it without executing anything from the file.

Every file records the format it was written in (`FORMAT_VERSION`); a file of
another format is refused with one line saying so, rather than read by a
branch kept for it.

Writes are atomic: the file is written under a temporary name in the same
folder and renamed over the old one only once complete, so a crash never
leaves a half-written checkpoint behind.
"""

import json
import zipfile
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from minidiff.machinery.atomic import atomic_write

# 2: the loop's runs (`minidiff.loop`), processes in the model's config, recipes.
FORMAT_VERSION = 2


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, or does not fit the model."""


def _to_host(value) -> np.ndarray:
    # In a multi-host run a replicated array spans devices this process cannot read;
    # its local copy is the whole array.
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        value = value.addressable_data(0)
    return np.asarray(value)


def _flat_arrays(prefix: str, state) -> dict[str, np.ndarray]:
    return {prefix + "/" + "/".join(map(str, path)): _to_host(variable.get_value()) for path, variable in nnx.to_flat_state(state)}


def save_checkpoint(path, header: dict, **modules) -> Path:
    """Save the state of each named module (model, ema, optimizer...) and a JSON header.

    In a multi-host run only the first process writes (they all hold the same replicated values).
    """
    arrays = {"header": np.array(json.dumps({"format_version": FORMAT_VERSION, **header}))}
    for name, module in modules.items():
        arrays.update(_flat_arrays(name, nnx.state(module)))
    if jax.process_index() != 0:
        return Path(path)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


class Checkpoint:
    """An opened checkpoint: the header (a dict) and named arrays, read lazily."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(
                f"no checkpoint at {self.path}; train one first with `minidiff train --out DIR` "
                "and pass DIR/checkpoint.npz"
            )
        try:
            self._arrays = np.load(self.path, allow_pickle=False)
            self.header = json.loads(str(self._arrays["header"]))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
            raise CheckpointError(
                f"{self.path} is not a readable minidiff checkpoint ({type(error).__name__}: {error}); "
                "it may be truncated or not a checkpoint at all"
            ) from error
        if self.header.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{self.path} was written in checkpoint format {self.header.get('format_version')}; this minidiff "
                f"reads format {FORMAT_VERSION} only: train it again (minidiff train --recipe ...)"
            )

    def fields(self, *names: str, kind: str) -> list:
        """The header's values of `names`; a clear error if this file is not a `kind` checkpoint."""
        missing = [name for name in names if name not in self.header]
        if missing:
            raise CheckpointError(f"{self.path} is not a {kind} checkpoint (its header has no {', '.join(missing)})")
        return [self.header[name] for name in names]

    def has(self, name: str) -> bool:
        return any(k.startswith(name + "/") for k in self._arrays.files)

    def restore(self, name: str, module) -> None:
        """Load the arrays saved under `name` into `module` (in place), checking every shape."""
        state = nnx.state(module)
        flat = nnx.to_flat_state(state)
        for path, variable in flat:
            key = name + "/" + "/".join(map(str, path))
            if key not in self._arrays.files:
                raise CheckpointError(f"{self.path} has no array {key!r}: it was saved from a different model")
            try:
                value = self._arrays[key]
            except (OSError, ValueError, zipfile.BadZipFile) as error:
                raise CheckpointError(f"{self.path}: array {key!r} is corrupt ({error})") from error
            expected = variable.get_value()
            if value.shape != expected.shape:
                raise CheckpointError(
                    f"{self.path}: {key} has shape {value.shape}, the model expects {expected.shape}"
                )
            variable.set_value(jax.numpy.asarray(value, dtype=expected.dtype))
        nnx.update(module, nnx.from_flat_state(flat))
