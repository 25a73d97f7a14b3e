"""Run every chapter notebook top to bottom; fail on the first error.

    MINIDIFF_SMOKE=1 python chapters/run_chapters.py     # tiny sizes, as CI does
    python chapters/run_chapters.py 03_from_noise_to_images.ipynb   # one chapter, full size

Outputs are not written back: notebooks are committed without outputs.
"""

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def run(path: Path, timeout: int) -> float:
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    return time.perf_counter() - start


def main(names):
    paths = [HERE / n for n in names] or sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    total = 0.0
    for path in paths:
        print(f"running {path.name} ...", flush=True)
        seconds = run(path, timeout=3600)
        total += seconds
        print(f"  ok in {seconds:.0f} s", flush=True)
    print(f"{len(paths)} chapters ran in {total:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
