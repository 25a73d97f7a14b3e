"""Atomic file writes: a file is either complete under its final name, or not there at all.

The data is written under a temporary name in the same folder and renamed
over the final name only once complete (a rename within a folder is atomic),
so a crash or an error part-way never leaves a half-written checkpoint,
cache or image behind.
"""

import os
import tempfile
from pathlib import Path


def atomic_write(path, write) -> Path:
    """Call write(file_object) on a temporary file, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
