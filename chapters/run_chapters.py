"""Run every chapter notebook top to bottom; fail if any cell raises.

    MINIDIFF_SMOKE=1 python chapters/run_chapters.py --jobs 2   # tiny sizes, two at a time, as CI does
    python chapters/run_chapters.py 03_from_noise_to_images.ipynb   # one chapter, full size

In smoke mode most of a chapter's time is XLA compiling its programs, which
often leaves a core idle, so two at a time finish sooner on a 2-core CPU (the
docs/chapters.md has the times). Outputs are not written back: notebooks are committed
without outputs.
"""

import argparse
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
FIRST_MODEL_CHAPTER = "02_learning_to_denoise.ipynb"


def run(path: Path, timeout: int = 3600) -> float:
    """Execute one notebook in a fresh kernel; seconds taken. Raises on the first failing cell."""
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebooks to run (default: every chapter)")
    parser.add_argument("--jobs", type=int, default=1, help="chapters run at the same time (default: 1)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    paths = [HERE / n for n in args.names] or sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    start, failed = time.perf_counter(), []
    # Chapter 02 trains the model that chapters 03, 04 and 07 load (they would train it again if it were
    # not there yet), so it runs first, on its own. Then the later chapters first: they build bigger
    # things and take longest, and started early, they do not run alone at the end.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {path: pool.submit(run, path) for path in paths if path.name == FIRST_MODEL_CHAPTER}
        wait(futures.values())
        futures |= {path: pool.submit(run, path) for path in reversed(paths) if path not in futures}
        for path in paths:  # reported in reading order
            try:
                print(f"{path.name}: ok in {futures[path].result():.0f} s", flush=True)
            except Exception as error:  # report it, let the others finish, fail at the end
                print(f"{path.name}: FAILED\n{error}", flush=True)
                failed.append(path.name)
    print(f"{len(paths) - len(failed)} of {len(paths)} chapters ran, in {time.perf_counter() - start:.0f} s")
    if failed:
        raise SystemExit(f"chapters that failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
