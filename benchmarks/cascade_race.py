"""The cascade against a direct model at equal training time: a small base model plus an upscaler, or one
model at full size.

    python benchmarks/cascade_race.py                                  # the embedded set and flowers, 10 minutes
    python benchmarks/cascade_race.py --dataset toy --minutes 4 --keep runs/race

For each dataset, three `minidiff train --recipe toy --set ...` runs, one after
the other (they share the CPU: never time two at once):
  - the cascade's base model at --low-res px, for --base-share of the budget;
  - its upscaler (model.upscale_from) from --low-res to --image-size px, for the rest;
  - a direct model at --image-size px, for the whole budget.
All are the tiny U-Net trained with diffusion (SETTINGS: batches of 32,
learning rate 3e-3, no sample grids), sampling with the toy recipe's DDIM, 50
steps, guidance 3; each model attends at its lowest level, as the demo-unet
recipe's U-Net does. On the embedded set at 32 and 64 px these are chapter 08's
recipes cascade-base, cascade-upscaler and cascade-direct. Then both are
measured by `minidiff evaluate` on the same held-out captions with one judge
per dataset (Fréchet distance and KID in its features, and how often it
recognises what the caption names), and, on the embedded set, by `minidiff
adherence` (the pixel judge, every attribute, seen and held-out pairs). Prints
a table and writes the figures to --out as JSON.
"""

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

# What every model of the race changes in the toy recipe (minidiff/recipes/toy.toml: a U-Net trained with
# diffusion, DDIM with 50 steps and guidance 3), as `--set` takes them.
SETTINGS = "model.preset=tiny train.batch_size=32 train.learning_rate=3e-3 train.report_every=0"


def minidiff(*arguments) -> str:
    """One `minidiff` command in its own process; its standard output."""
    command = [sys.executable, "-m", "minidiff.command.cli", *map(str, arguments)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def train(out: Path, dataset: str, size: int, minutes: float, extra: str = "") -> None:
    # Attention at the lowest level: the image side over the patch size (2), halved once (two levels).
    minidiff("train", "--recipe", "toy", "--minutes", minutes, "--out", out, "--quiet", "--set",
             *shlex.split(SETTINGS), f"data.dataset={dataset}", f"data.image_size={size}",
             f"model.denoiser.attention_resolutions=[{size // 4}]", *shlex.split(extra))


def measure(checkpoint: Path, upscalers: list[Path], dataset: str, judge: Path, num_samples: int, out: Path,
            judge_steps: int | None = None) -> dict:
    """`minidiff evaluate` (and on the embedded set `minidiff adherence`) of a model or a cascade; both write
    into the folder `out`."""
    cascade = [argument for path in upscalers for argument in ("--upscaler", path)]
    new_judge = ["--judge-steps", judge_steps] if judge_steps else []
    minidiff("evaluate", "--checkpoint", checkpoint, *cascade, "--dataset", dataset, "--num-samples", num_samples,
             "--out", out, "--quiet", *(["--judge", judge] if judge.is_file() else new_judge))
    if not judge.is_file():  # trained beside the first checkpoint: every later run is measured by the same one
        judge.write_bytes(next(checkpoint.parent.glob("judge-*.npz")).read_bytes())
    metrics = json.loads((out / "metrics.json").read_text())
    if dataset == "toy":
        minidiff("adherence", "--checkpoint", checkpoint, *cascade, "--guidance", 3, "--num-images", num_samples,
                 "--out", out)
        metrics["pixel_adherence"] = json.loads((out / "adherence.json").read_text())
    return metrics


def row(name: str, metrics: dict) -> str:
    cells = [f"{metrics['judge_fd']:.1f}", f"{metrics['judge_kid']:.4f}", f"{metrics['judge_adherence_mean']:.0%}",
             f"{sum(metrics['judge_accuracy_on_real'].values()) / len(metrics['judge_accuracy_on_real']):.0%}"]
    if "pixel_adherence" in metrics:
        seen, held_out = (metrics["pixel_adherence"][f"{split}/guidance=3"] for split in ("test", "held_out"))
        cells.append(", ".join(f"{k} {seen[k]:.0%} ({held_out[k]:.0%})" for k in seen))
    return f"| {name} | " + " | ".join(cells) + " |"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", nargs="+", default=["toy", "flowers"])
    parser.add_argument("--minutes", type=float, default=10.0, help="each approach's training budget")
    parser.add_argument("--base-share", type=float, default=0.5, help="the cascade's base model's part of it")
    parser.add_argument("--low-res", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--judge-steps", type=int, help="training steps of each dataset's judge (default: "
                        "minidiff evaluate's)")
    parser.add_argument("--keep", help="keep the runs in this folder (default: a temporary one)")
    parser.add_argument("--out", default="cascade_race.json")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        runs = Path(args.keep or scratch)
        for dataset in args.dataset:
            here = runs / dataset
            base_minutes = args.minutes * args.base_share
            train(here / "base", dataset, args.low_res, base_minutes)
            train(here / "upscaler", dataset, args.image_size, args.minutes - base_minutes,
                  f"model.upscale_from={args.low_res}")
            train(here / "direct", dataset, args.image_size, args.minutes)
            judge = here / "judge.npz"
            results[dataset] = {
                "direct": measure(here / "direct" / "checkpoint.npz", [], dataset, judge, args.num_samples,
                                  here / "direct" / "evaluation", args.judge_steps),
                "cascade": measure(here / "base" / "checkpoint.npz", [here / "upscaler" / "checkpoint.npz"], dataset,
                                   judge, args.num_samples, here / "base" / "evaluation", args.judge_steps),
            }
            print(f"\n{dataset}, {args.minutes:g} minutes each ({base_minutes:g} + {args.minutes - base_minutes:g} for "
                  "the cascade)\n| model | judge FD | judge KID | class/attributes recognised | judge on real | "
                  "pixel judge, seen (held-out) |\n|---|---|---|---|---|---|")
            for name, metrics in results[dataset].items():
                print(row(name, metrics), flush=True)
            Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
