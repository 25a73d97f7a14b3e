"""The real-data race: text-to-image recipes on 64 px flowers (or birds) at equal CPU minutes, everything
counted, and Keras' DDIM example beside them, judged alike; one table.

    python benchmarks/real_data_race.py --judges --keep runs/race         # first: the two judges, once
    python benchmarks/real_data_race.py --row "latent f=4, U-Net" --minutes 30 --keep runs/race
    python benchmarks/real_data_race.py --keras /path/to/keras-venv/bin/python --minutes 30 90 --keep runs/race
    python benchmarks/real_data_race.py --table --keep runs/race          # the table of every row kept there
    python benchmarks/real_data_race.py --dataset birds --autoencoder runs/race/autoencoder-f4 ...

A row is one recipe trained by `minidiff train` for a budget of wall-clock
minutes that counts everything the row needs: its autoencoder's training
(for a latent row), encoding the images to latents, compiling, sample grids,
saving. Rows of the same factor share one autoencoder, trained once (for
--autoencoder-minutes) and its wall time charged to each of them in full, as
if each had trained its own. The cascade's budget is split between its base
model and its upscaler (--base-share). Run one row per process; two may run
side by side, one per core (`taskset -c 0`, `taskset -c 1`), never more.

Every row is then measured by `minidiff evaluate` on the same --num-samples
held-out captions of the eval split (DDIM, 50 steps, guidance 3 unless the
recipe says otherwise) with the same two judges, trained once in the --keep
folder by --judges: the class judge (Fréchet distance and KID in its features, how often
it recognises the caption's class) and the caption judge (R-precision and
caption similarity). Their figures on the real eval images are the ceiling.

The peer (--keras PYTHON: an interpreter with the `keras` extra) is
`minidiff.command.keras_peer`: Keras' example network and recipe,
unconditional as published, trained once for the longest budget with its raw
and EMA weights kept at each shorter one; its samples are judged by the same
judges (its class and R-precision figures are those of images drawn without a
caption: chance).
"""

import argparse
import dataclasses
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

def data_fields(dataset: str) -> list[str]:
    """The images the race trains on (minidiff's splits: the eval split is what it is judged on)."""
    return [f"data.dataset={dataset}", "data.split=all_but_eval", "data.image_size=64"]
ALLOWANCE_MINUTES = 1.0  # of a row's budget, left for what `minidiff train --minutes` does not count


@dataclasses.dataclass(frozen=True)
class Row:
    recipe: str = "latent-diffusion"  # the small U-Net by diffusion (minidiff/recipes/latent-diffusion.toml)
    autoencoder: int = 0  # the latent factor; 0: pixels
    fields: str = ""  # recipe fields changed, as --set takes them
    cascade_from: int = 0  # a cascade: the base model's side; its upscaler goes from there to 64 px


DIT_FLOW = "model.backbone=dit process.kind=flow"
ROWS = {
    "pixels, U-Net": Row(),
    "pixels, DiT, flow": Row(fields=DIT_FLOW),
    "latent f=4, U-Net": Row(autoencoder=4),
    # 2 x 2 patches of the 16 x 16 latent: 64 tokens (latent DiTs cut 1-2 latent pixels).
    "latent f=4, DiT p2, flow": Row(autoencoder=4, fields=f"{DIT_FLOW} model.denoiser.patch_size=2"),
    "latent f=8, U-Net": Row(autoencoder=8),
    "latent f=8, DiT p1, flow": Row(autoencoder=8, fields=f"{DIT_FLOW} model.denoiser.patch_size=1"),
    "cascade 32 -> 64 px, U-Nets": Row(cascade_from=32, fields="model.denoiser.attention_resolutions=[4]"),
}


def minidiff(*arguments, quiet_out: Path | None = None) -> str:
    """One `minidiff` command in its own process; its standard output (also kept in quiet_out)."""
    command = [sys.executable, "-m", "minidiff.command.cli", *map(str, arguments)]
    result = subprocess.run(command, capture_output=True, text=True)
    if quiet_out is not None:
        quiet_out.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def autoencoder(keep: Path, factor: int, args, data_dir) -> tuple[Path, float]:
    """The race's autoencoder of this factor, trained once (or --autoencoder's); (its file, the wall seconds it
    took)."""
    folder = Path(args.autoencoder) if args.autoencoder else keep / f"autoencoder-f{factor}"
    record = folder / "wall_seconds.json"
    if not record.is_file():
        start = time.perf_counter()
        minidiff("train-autoencoder", "--set", *data_fields(args.dataset), f"autoencoder.factor={factor}", "--minutes",
                 args.autoencoder_minutes,
                 "--out", folder, "--quiet", *data_dir, quiet_out=keep / f"autoencoder-f{factor}.log")
        record.write_text(json.dumps({"seconds": time.perf_counter() - start}))
    return folder / "autoencoder.npz", json.loads(record.read_text())["seconds"]


def train_row(name: str, row: Row, budget: float, keep: Path, args) -> dict:
    """Train one row within `budget` minutes of wall clock; what it took."""
    out, data_dir = keep / slug(name), ["--data-dir", args.data_dir] if args.data_dir else []
    out.mkdir(parents=True, exist_ok=True)
    charged = 0.0  # the autoencoder's wall seconds, trained before the row's own clock starts
    fields = [*data_fields(args.dataset), *shlex.split(row.fields)]
    if row.autoencoder:
        file, charged = autoencoder(keep, row.autoencoder, args, data_dir)
        fields.append(f"model.autoencoder={file}")
        charged = 0.0 if args.autoencoder and not args.charge_autoencoder else charged
    start = time.perf_counter()
    left = lambda: budget - charged / 60 - (time.perf_counter() - start) / 60 - ALLOWANCE_MINUTES  # noqa: E731
    if row.cascade_from:
        base = [f.replace("data.image_size=64", f"data.image_size={row.cascade_from}") for f in fields]
        minidiff("train", "--recipe", row.recipe, "--set", *base, "--minutes", args.base_share * left(), "--out",
                 out / "base", "--quiet", *data_dir, quiet_out=out / "base.log")
        minidiff("train", "--recipe", row.recipe, "--set", *fields, f"model.upscale_from={row.cascade_from}",
                 "model.denoiser.attention_resolutions=[]", "--minutes", left(), "--out", out / "upscaler", "--quiet",
                 *data_dir, quiet_out=out / "upscaler.log")
    else:
        minidiff("train", "--recipe", row.recipe, "--set", *fields, "--minutes", left(), "--out", out, "--quiet",
                 *data_dir, quiet_out=out / "train.log")
    seconds = charged + time.perf_counter() - start
    logs = [out / "base.log", out / "upscaler.log"] if row.cascade_from else [out / "train.log"]
    steps = [int(s) for log in logs for s in re_steps(log.read_text())]
    return {"row": name, "budget_minutes": budget, "seconds": seconds, "autoencoder_seconds": charged,
            "steps": steps, "checkpoint": str((out / "base" if row.cascade_from else out) / "checkpoint.npz"),
            "upscaler": str(out / "upscaler" / "checkpoint.npz") if row.cascade_from else None}


def re_steps(log: str) -> list[str]:
    """The steps each `minidiff train` in a log says it trained."""
    return re.findall(r"trained (\d+) steps", log)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def judge_files(keep: Path, dataset: str) -> list[Path]:
    files = [next(keep.glob(f"{kind}-{dataset}-*.npz"), None) for kind in ("judge", "caption-judge")]
    if None in files:
        raise SystemExit(f"no judges in {keep}: train them first with --judges")
    return files


def train_judges(keep: Path, args) -> None:
    """The race's class judge and caption judge, trained once into `keep` (`minidiff evaluate`'s defaults)."""
    from minidiff.evaluation.evaluate import caption_judge_for, judge_for

    for find in (judge_for, caption_judge_for):
        find(keep / "race", args.dataset, 64, data_dir=args.data_dir, progress=False, steps=args.judge_steps)


def evaluate_row(result: dict, keep: Path, args) -> dict:
    checkpoint = Path(result["checkpoint"])
    cascade = ["--upscaler", result["upscaler"]] if result["upscaler"] else []
    out = keep / slug(result["row"]) / "evaluation"
    judge, caption_judge = judge_files(keep, args.dataset)
    minidiff("evaluate", "--checkpoint", checkpoint, *cascade, "--dataset", args.dataset, "--num-samples",
             args.num_samples, "--out", out, "--quiet", "--judge", judge, "--caption-judge", caption_judge,
             *(["--data-dir", args.data_dir] if args.data_dir else []), quiet_out=out.parent / "evaluate.log")
    return result | {"metrics": json.loads((out / "metrics.json").read_text())}


def run_keras(keep: Path, args) -> list[dict]:
    """The peer, trained once to the longest budget; a row per budget and weights (raw, EMA)."""
    out = keep / "keras-peer"
    command = [args.keras, "-m", "minidiff.command.keras_peer", "--dataset", args.dataset, "--minutes",
               *map(str, args.minutes),
               "--num-samples", str(args.num_samples), "--out", str(out),
               *(["--data-dir", args.data_dir] if args.data_dir else [])]
    result = subprocess.run(command, capture_output=True, text=True)
    (keep / "keras-peer.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{result.stderr[-3000:]}")
    return keras_rows(keep, args.dataset, args.data_dir)


def keras_rows(keep: Path, dataset: str, data_dir=None) -> list[dict]:
    """The peer's samples judged by the race's judges."""
    from minidiff.evaluation.caption_judge import caption_metrics, load_caption_judge
    from minidiff.evaluation.evaluate import judge_metrics, reference_set
    from minidiff.evaluation.judge import load_judge

    out = keep / "keras-peer"
    run = json.loads((out / "run.json").read_text())
    judge_file, caption_judge_file = judge_files(keep, dataset)
    judge, caption_judge = load_judge(judge_file), load_caption_judge(caption_judge_file)
    rows = []
    for snapshot in run["snapshots"]:
        for weights in ("raw", "ema"):
            images = np.load(out / f"samples-{snapshot['minutes']:g}min-{weights}.npz")["images"]
            reference = reference_set(dataset, 64, num_images=max(len(images), 100), data_dir=data_dir)
            metrics = judge_metrics(judge, images, reference) | caption_metrics(caption_judge, images, reference)
            rows.append({"row": f"Keras DDIM example ({weights} weights)", "budget_minutes": snapshot["minutes"],
                         "seconds": snapshot["seconds"], "steps": [snapshot["steps"]], "metrics": metrics})
    return rows


def table(results: list[dict]) -> str:
    lines = ["| row | budget | wall | steps | judge FD | judge KID | class recognised | R-precision | similarity |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r["budget_minutes"], r["metrics"]["judge_fd"])):
        m = r["metrics"]
        lines.append(f"| {r['row']} | {r['budget_minutes']:g} min | {r['seconds'] / 60:.1f} min | "
                     f"{' + '.join(map(str, r['steps']))} | {m['judge_fd']:.1f} | {m['judge_kid']:.1f} | "
                     f"{m['judge_adherence']['class']:.0%} | {m['r_precision_generated']:.1%} | "
                     f"{m['caption_similarity_generated']:.1f} |")
    m = results[0]["metrics"]
    lines.append(f"| real held-out images (the ceiling) | | | | | | {m['judge_accuracy_on_real']['class']:.0%} | "
                 f"{m['r_precision_real']:.1%} | {m['caption_similarity_real']:.1f} |")
    return "\n".join(lines)


def save(result: dict, keep: Path) -> None:
    """One file per row and budget (rows run side by side write different files)."""
    name = f"result-{slug(result['row'])}-{result['budget_minutes']:g}min.json"
    (keep / name).write_text(json.dumps(result, indent=2))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judges", action="store_true", help="train the two judges into --keep (once, first)")
    parser.add_argument("--row", action="append", choices=list(ROWS), help="a row to train and measure; repeat")
    parser.add_argument("--keras", metavar="PYTHON", help="the Keras peer, run by this interpreter")
    parser.add_argument("--keras-judged", action="store_true", help="judge the Keras peer's samples kept in --keep")
    parser.add_argument("--minutes", type=float, nargs="+", default=[30.0], help="budgets (default: 30)")
    parser.add_argument("--table", action="store_true", help="print the table of every row kept in --keep")
    parser.add_argument("--dataset", default="flowers", choices=["flowers", "birds"])
    parser.add_argument("--autoencoder-minutes", type=float, default=6.0)
    parser.add_argument("--autoencoder", help="a folder with an autoencoder.npz to use instead (e.g. the flowers "
                        "race's, for birds), with the wall_seconds.json of its training")
    parser.add_argument("--charge-autoencoder", action="store_true", help="charge --autoencoder's training time too")
    parser.add_argument("--judge-steps", type=int, help="training steps of the judges (default: evaluate's)")
    parser.add_argument("--base-share", type=float, default=0.5, help="a cascade's share of its budget for the base")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--data-dir", help="where the dataset is (default: $MINIDIFF_DATA_DIR, then ./data)")
    parser.add_argument("--keep", required=True, help="the race's folder: runs, judges, result-*.json")
    args = parser.parse_args()
    keep = Path(args.keep)
    keep.mkdir(parents=True, exist_ok=True)
    if args.judges:
        train_judges(keep, args)
    for name in args.row or []:
        for budget in args.minutes:
            result = evaluate_row(train_row(name, ROWS[name], budget, keep, args), keep, args)
            save(result, keep)
            print(table([result]), flush=True)
    if args.keras or args.keras_judged:
        rows = run_keras(keep, args) if args.keras else keras_rows(keep, args.dataset, args.data_dir)
        for result in rows:
            save(result, keep)
        print(table(rows), flush=True)
    if args.table:
        print(table([json.loads(path.read_text()) for path in sorted(keep.glob("result-*.json"))]))


if __name__ == "__main__":
    main()
