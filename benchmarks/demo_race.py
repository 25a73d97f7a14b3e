"""The demo's recipe race: `minidiff demo` with each recipe in turn, on the same budget, graded alike.

    python benchmarks/demo_race.py                      # every recipe below, 5 minutes each
    python benchmarks/demo_race.py --minutes 2 --recipe "--batch-size 32" --recipe "--preset tiny"

Each recipe is a whole `minidiff demo` run in its own process (extra demo
options; the empty recipe is the demo as shipped), one after the other: time
one at a time, never two at once, as they share the CPU. Prints one row per
recipe as it finishes: steps reached, the demo's wall time, and what the demo's
self-grading printed (seen pairs, then in brackets pairs never seen), and
writes them all to --out as JSON.
"""

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Options on top of the demo's own recipe (`cli.DEMO_RECIPE`); the small model's rows set all four of its settings.
SMALL = "--preset small --attention-at 4"  # the small U-Net as its preset has it
RECIPES = ["",  # the demo as shipped
           f"{SMALL} --batch-size 64 --learning-rate 1e-3", f"{SMALL} --batch-size 64 --learning-rate 2e-3",
           f"{SMALL} --batch-size 32 --learning-rate 1e-3", "--preset small --attention-at 8 4 --batch-size 64 "
           "--learning-rate 1e-3", f"{SMALL} --batch-size 32 --learning-rate 2e-3",
           f"{SMALL} --batch-size 16 --learning-rate 2e-3", "--batch-size 16", "--seed 1"]
GRADE = re.compile(r"^\s+(.+?): (\d+) % of images match their caption(?:, (\d+) % for pairs never seen)?")
COLUMNS = ["petal colour", "centre colour", "body colour", "wing colour", "beak colour", "bird facing"]


def run_demo(recipe: str, minutes: float, out: Path) -> dict:
    """One demo run; its steps, wall time and grades ({attribute: (seen, never seen)}, in %)."""
    command = [sys.executable, "-m", "minidiff.command.cli", "demo", "--minutes", str(minutes), "--quiet",
               "--out", str(out), *shlex.split(recipe)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    steps = int(re.search(r"trained (\d+) steps", result.stdout).group(1))
    grades = {m.group(1): (int(m.group(2)), m.group(3) and int(m.group(3)))
              for m in map(GRADE.match, result.stdout.splitlines()) if m}
    return {"recipe": recipe or "(the demo)", "steps": steps, "seconds": time.perf_counter() - start, "grades": grades}


def row(result: dict) -> str:
    cells = [f"{seen} % ({never} %)" if never is not None else f"{seen} %"
             for seen, never in (result["grades"][c] for c in COLUMNS)]
    return f"| {result['recipe']} | {result['steps']} | {result['seconds']:.0f} s | " + " | ".join(cells) + " |"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="each recipe's training budget")
    parser.add_argument("--recipe", action="append", help="extra demo options, quoted; repeat (default: RECIPES)")
    parser.add_argument("--out", default="demo_race.json")
    args = parser.parse_args()
    print("| recipe | steps | demo | " + " | ".join(COLUMNS) + " |")
    print("|---|---|---|" + "---|" * len(COLUMNS))
    results = []
    with tempfile.TemporaryDirectory() as runs:
        for i, recipe in enumerate(args.recipe or RECIPES):
            results.append(run_demo(recipe, args.minutes, Path(runs) / str(i)))
            print(row(results[-1]), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
