"""The demo's recipe race: `minidiff demo` with each recipe in turn, on the same budgets, graded alike.

    python benchmarks/demo_race.py                      # every variant below, 5 minutes each
    python benchmarks/demo_race.py --minutes 2 --variant "train.batch_size=64" --variant "model.preset=small"
    python benchmarks/demo_race.py --minutes 2 5 10 --backbones-and-processes --fd 256 --plot race.png

Each variant is a whole `minidiff demo` run in its own process, its recipe
changed by `--set` with the variant's fields (the empty variant is the demo as
shipped), one after the other: time one at a time, never two at once, as they
share the CPU. Prints one row per
recipe and budget as it finishes: steps reached, the demo's wall time, and what
the demo's self-grading printed (seen pairs, then in brackets pairs never
seen), and writes them all to --out as JSON. With --fd N, each run is also
measured by `minidiff evaluate` on N held-out captions: the Fréchet distance in
the features of one judge, trained once for the whole race. With --plot, the
mean held-out colour adherence and the judge FD against minutes, per recipe.
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

from minidiff.evaluation.pixel_judge import colour_adherence

# Fields of the demo's recipe (minidiff/recipes/demo.toml) changed, as `--set` takes them. VARIANTS race
# U-Nets trained with diffusion (the demo's model before DiTs and flows: the demo-unet recipe, whose tiny
# U-Net attends at 8x8 too); the small model's rows set all of its settings.
UNET = "model.backbone=unet process.kind=diffusion model.denoiser.attention_resolutions=[8]"
SMALL = "model.backbone=unet process.kind=diffusion model.preset=small model.denoiser.attention_resolutions=[4]"
VARIANTS = [UNET,  # the former demo
            f"{SMALL} train.batch_size=64 train.learning_rate=1e-3",
            f"{SMALL} train.batch_size=64 train.learning_rate=2e-3",
            f"{SMALL} train.batch_size=32 train.learning_rate=1e-3",
            f"{SMALL.replace('[4]', '[8,4]')} train.batch_size=64 train.learning_rate=1e-3",
            f"{SMALL} train.batch_size=32 train.learning_rate=2e-3",
            f"{SMALL} train.batch_size=16 train.learning_rate=2e-3",
            f"{UNET} train.batch_size=16", f"{UNET} train.seed=1"]
# {U-Net, DiT} x {diffusion, flow}, each with the demo's recipe (the U-Net attending at 8x8 too, as demo-unet).
BACKBONES_AND_PROCESSES = [f"model.backbone={backbone} process.kind={kind}"
                           + (" model.denoiser.attention_resolutions=[8]" if backbone == "unet" else "")
                           for backbone in ("unet", "dit") for kind in ("diffusion", "flow")]
GRADE = re.compile(r"^\s+(.+?): (\d+) % of images match their caption(?:, (\d+) % for pairs never seen)?")
COLUMNS = ["petal colour", "centre colour", "body colour", "wing colour", "beak colour", "bird facing"]
COLOURS = [c for c in COLUMNS if c.endswith("colour")]


def run_demo(variant: str, minutes: float, out: Path) -> dict:
    """One demo run; its steps, wall time and grades ({attribute: (seen, never seen)}, in %)."""
    fields = shlex.split(variant)
    command = [sys.executable, "-m", "minidiff.command.cli", "demo", "--minutes", str(minutes), "--quiet",
               "--out", str(out), *(["--set", *fields] if fields else [])]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    steps = int(re.search(r"trained (\d+) steps", result.stdout).group(1))
    grades = {m.group(1): (int(m.group(2)), m.group(3) and int(m.group(3)))
              for m in map(GRADE.match, result.stdout.splitlines()) if m}
    return {"variant": variant or "(the demo)", "minutes": minutes, "steps": steps,
            "seconds": time.perf_counter() - start, "grades": grades}


def judge_fd(checkpoint: Path, num_samples: int, judge: Path) -> float:
    """`minidiff evaluate`'s judge Fréchet distance of the run's images; trains the judge at `judge` if missing."""
    out = checkpoint.parent / "evaluation"
    command = [sys.executable, "-m", "minidiff.command.cli", "evaluate", "--checkpoint", str(checkpoint),
               "--num-samples", str(num_samples), "--out", str(out), "--quiet"]
    result = subprocess.run(command + (["--judge", str(judge)] if judge.is_file() else []), capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    if not judge.is_file():  # trained beside the first checkpoint: every later run is measured by the same one
        judge.write_bytes(next(checkpoint.parent.glob("judge-*.npz")).read_bytes())
    return json.loads((out / "metrics.json").read_text())["judge_fd"]


def row(result: dict) -> str:
    cells = [f"{seen} % ({never} %)" if never is not None else f"{seen} %"
             for seen, never in (result["grades"][c] for c in COLUMNS)]
    fd = f" {result['judge_fd']:.1f} |" if "judge_fd" in result else ""
    return (f"| {result['variant']} | {result['minutes']:g} | {result['steps']} | {result['seconds']:.0f} s | "
            + " | ".join(cells) + " |" + fd)


def held_out_colours(result: dict) -> float:
    """The colour adherence (`pixel_judge.colour_adherence`) on pairs never seen in training, in %."""
    never_seen = {f"grade/{name.replace(' ', '_')}": result["grades"][name][1] / 100 for name in COLOURS}
    return 100 * colour_adherence(never_seen)


def plot(results: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("held-out colour adherence (%)", held_out_colours)]
    if all("judge_fd" in r for r in results):
        panels.append(("judge Fréchet distance (lower is better)", lambda r: r["judge_fd"]))
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (label, value) in zip(axes[0], panels):
        for variant in dict.fromkeys(r["variant"] for r in results):
            mine = sorted((r for r in results if r["variant"] == variant), key=lambda r: r["minutes"])
            ax.plot([r["minutes"] for r in mine], [value(r) for r in mine], marker="o", label=variant)
        ax.set_xlabel("minutes of training (2 CPU cores)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[5.0], help="training budgets, each run anew")
    parser.add_argument("--variant", action="append", help="recipe fields to change, as --set takes them, quoted; "
                        "repeat (default: VARIANTS)")
    parser.add_argument("--backbones-and-processes", action="store_true",
                        help="race BACKBONES_AND_PROCESSES (U-Net and DiT, diffusion and flow) instead of VARIANTS")
    parser.add_argument("--fd", type=int, metavar="N", help="also the judge FD of N images per run")
    parser.add_argument("--keep", help="keep the runs in this folder (default: a temporary one)")
    parser.add_argument("--plot", help="also plot quality against minutes into this PNG")
    parser.add_argument("--out", default="demo_race.json")
    args = parser.parse_args()
    variants = args.variant or (BACKBONES_AND_PROCESSES if args.backbones_and_processes else VARIANTS)
    print("| variant | minutes | steps | demo | " + " | ".join(COLUMNS) + " |" + (" judge FD |" if args.fd else ""))
    print("|---|---|---|---|" + "---|" * (len(COLUMNS) + bool(args.fd)))
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        runs = Path(args.keep or scratch)
        for minutes in args.minutes:
            for i, variant in enumerate(variants):
                run = runs / f"{i}-{minutes:g}min"
                results.append(run_demo(variant, minutes, run))
                if args.fd:
                    results[-1]["judge_fd"] = judge_fd(run / "checkpoint.npz", args.fd, runs / "judge.npz")
                print(row(results[-1]), flush=True)
                Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
