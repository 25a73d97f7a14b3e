"""JAX's persistent compilation cache: compiled programs kept on disk between runs.

Compiling the training step takes tens of seconds on a laptop CPU; with the
cache, a second run of the same model (a test suite, a chapter, the demo)
loads it in a second or two instead.
"""

import os
from pathlib import Path

import jax


def enable_compilation_cache(directory=None) -> str:
    """Cache every compiled program in `directory` ($JAX_COMPILATION_CACHE_DIR, else ~/.cache/minidiff/jax)."""
    directory = str(directory or os.environ.get("JAX_COMPILATION_CACHE_DIR") or Path.home() / ".cache" / "minidiff" / "jax")
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return directory
