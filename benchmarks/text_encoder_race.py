"""The text encoders raced: the same denoiser, the same steps, each encoder reading the captions.

    python benchmarks/text_encoder_race.py                       # every encoder, 3000 steps each
    python benchmarks/text_encoder_race.py --steps 500 --encoder bag_of_words --encoder lstm

Each row is one `minidiff train --recipe words` on the embedded dataset (the
demo's model: the tiny DiT trained as a flow, batches of 32, learning rate
3e-3) with one text encoder (`--set model.text_encoder=...`), then `minidiff
adherence` at guidance 1 and 3 (with the recipe's DDIM, 50 steps): the pixel
judge's adherence per attribute on captions of attribute pairs seen in training
and of pairs never seen, and the swapped-colours test (`evaluation.word_order`).
The "frozen" row's encoder is the transformer, pretrained first on the training
captions as text alone (`minidiff pretrain-text`, the same size as the joint
one) and frozen while the denoiser trains (`--set model.text_encoder_file=...`).
Runs one after the other (they share the CPU); prints a row per run and writes
all of them to --out as JSON.
"""

import argparse
import json
import tempfile
from pathlib import Path

from cascade_race import minidiff  # one `minidiff` command in its own process (this folder's scripts share it)

RECIPE = "words"  # minidiff/recipes/words.toml: the demo's model, on 8000 images of the embedded set
ENCODERS = ("bag_of_words", "lstm", "transformer", "frozen")
ATTRIBUTES = ("flowers/petal_colour", "flowers/centre_colour", "birds/body_colour", "birds/wing_colour")


def training_captions(path: Path) -> Path:
    """The captions of the recipe's training images, one per line: the frozen encoder's corpus."""
    from minidiff.recipe import load_recipe
    path.write_text("\n".join(load_recipe(RECIPE).data.load().all_captions()) + "\n")
    return path


def images_per_second(checkpoint: Path) -> float:
    """The run's training speed, as `minidiff train` prints it: images over the time trained (the first step,
    which compiles, is not timed); NaN for a run of under a second, too short to time."""
    from minidiff.machinery.checkpoints import Checkpoint
    from minidiff.training import KIND
    step, seconds, config = Checkpoint(checkpoint).fields("step", "trained_seconds", "train_config", kind=KIND)
    return step * config["batch_size"] / seconds if seconds >= 1.0 else float("nan")


def race(encoder: str, steps: int, pretrain_steps: int, folder: Path, num_images: int | None = None) -> dict:
    out = folder / encoder
    settings = [f"model.text_encoder={encoder}"]
    if encoder == "frozen":
        minidiff("pretrain-text", "--corpus", training_captions(folder / "captions.txt"), "--preset", "tiny",
                 "--min-count", "1", "--steps", pretrain_steps, "--out", out, "--quiet")
        settings = [f"model.text_encoder_file={out / 'text_encoder.npz'}"]
    minidiff("train", "--recipe", RECIPE, "--set", *settings, "--steps", steps, "--out", out, "--quiet")
    minidiff("adherence", "--checkpoint", out / "checkpoint.npz", "--guidance", "1", "3", "--out", out,
             *(["--num-images", num_images] if num_images else []))
    return {"encoder": encoder, "steps": steps, "train_images_per_s": images_per_second(out / "checkpoint.npz"),
            "scores": json.loads((out / "adherence.json").read_text())}


def row(result: dict) -> str:
    cells = [result["encoder"], f"{result['train_images_per_s']:.0f}"]
    for guidance in ("1", "3"):
        scores = result["scores"]
        for attribute in ATTRIBUTES:
            seen = scores[f"test/guidance={guidance}"][attribute]
            never = scores[f"held_out/guidance={guidance}"][attribute]
            cells.append(f"{seen:.0%} ({never:.0%})")
        cells.append(f"{scores[f'swapped_colours/guidance={guidance}']['own colours']:.0%}")
    return "| " + " | ".join(cells) + " |"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="training steps of every run (default: %(default)s)")
    parser.add_argument("--pretrain-steps", type=int, default=2000,
                        help="the frozen encoder's pretraining steps (default: %(default)s)")
    parser.add_argument("--encoder", action="append", choices=ENCODERS, help="race only these (default: all)")
    parser.add_argument("--num-images", type=int, help="images per split and guidance scale that minidiff adherence "
                        "draws (default: its own)")
    parser.add_argument("--out", default="runs/text_encoder_race.json", help="the JSON to write (default: %(default)s)")
    parser.add_argument("--keep", help="keep the runs' folders here (default: a temporary folder)")
    args = parser.parse_args(argv)
    names = [a.split("/")[1].replace("_", " ") for a in ATTRIBUTES] + ["swapped colours"]
    header = ["encoder", "train img/s"] + [f"{name}, g={g}" for g in ("1", "3") for name in names]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.keep or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for encoder in args.encoder or ENCODERS:
            results.append(race(encoder, args.steps, args.pretrain_steps, folder, args.num_images))
            print(row(results[-1]), flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
