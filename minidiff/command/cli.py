"""The `minidiff` command: demo, recipes, train, train-autoencoder, pretrain-text, sample, adherence, evaluate,
bench, course.

    minidiff demo                                   # train on the embedded data, draw captions, grade itself
    minidiff recipes                                # the named recipes, one line each
    minidiff train --recipe toy --out runs/toy --steps 2000
    minidiff sample --checkpoint runs/toy/checkpoint.npz --caption "a red flower with a yellow centre"
    minidiff course grade submissions/ --out grades       # run and grade a class's chapter notebooks

Each command is a short function that calls the library; the options are in
`options.py`. Errors the user can fix (a missing file, a bad value, an empty
caption, an option that does not apply) end with one line saying what is
wrong and exit status 2.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from minidiff.autoencoder import FACTORS
from minidiff.captions import CaptionError
from minidiff.command.benchmark import benchmark, format_row, table_header
from minidiff.command.options import (add_autoencoder_option, add_cascade_options, add_data_access_options,
                                      add_length_options, add_recipe_options, add_run_options, add_sampling_options,
                                      at_least, default_of, parameter_option, positive_number, sampling_settings)
from minidiff.command.pretrain_text import add_pretrain_text_command
from minidiff.command.runs import draw_grid, run_autoencoder_training, run_training, with_upscalers
from minidiff.course.grading import DEFAULT_TIMEOUT, grade_class, write_student_copy
from minidiff.datasets import DATASETS
from minidiff.evaluation.caption_judge import DISTRACTORS
from minidiff.evaluation.evaluate import JUDGE_STEPS, caption_judge_for, evaluate, judge_for, reference_set
from minidiff.evaluation.inception import load_fid_inception
from minidiff.evaluation.pixel_judge import adherence_lines, measure_pixel_adherence
from minidiff.evaluation.plotting import captioned_grid, save_figure, save_loss_curve
from minidiff.evaluation.word_order import swapped_colours_test
from minidiff.generator import load
from minidiff.loop import TrainingDiverged
from minidiff.machinery.atomic import atomic_write
from minidiff.machinery.checkpoints import CheckpointError
from minidiff.machinery.compilation import enable_compilation_cache
from minidiff.machinery.sharding import initialize_distributed, one_device_per_cpu_core
from minidiff.model import BACKBONES, PRESETS, preset
from minidiff.precision import PRECISIONS
from minidiff.recipe import describe_recipes

DEMO_CAPTIONS = (
    "a red flower with a yellow centre",
    "a white flower with a black centre",
    "a blue flower with a yellow centre",  # never seen together in training
    "a purple flower with a black centre",  # never seen together in training
    "a yellow bird with blue wings",
    "a white bird with red wings",
    "a red bird with black wings",  # never seen together in training
    "a blue bird with white wings",  # never seen together in training
)
DEMO_GRADED_IMAGES = 96  # per split: images the demo draws to grade itself
PER_CAPTION = 6  # images per caption in a grid


# --- Commands ------------------------------------------------------------------------


def cmd_recipes(args):
    for line in describe_recipes():
        print(line)


def cmd_train(args):
    trained = run_training(args, DEMO_CAPTIONS)
    out = Path(args.out)
    save_loss_curve(trained.run.losses, out / "loss.png")
    grids = sorted(out.glob("samples_step*.png"))  # one per report; the last is the run's end
    last_grid = f" and {grids[-1]} (the last grid)" if grids else ""
    print(f"wrote {out / 'checkpoint.npz'}, {out / 'loss.png'}{last_grid}")


def cmd_train_autoencoder(args):
    run_autoencoder_training(args)


def grade_demo(generator, num_images: int = DEMO_GRADED_IMAGES) -> list[str]:
    """How well the demo's model follows captions, as lines to print: the pixel judge on `num_images`
    captions of the embedded set's test split (attribute pairs seen in training) and as many of its
    held-out split (pairs never seen), drawn with the model's own settings (and the grid's batch size,
    so the grid's compiled sampler serves)."""
    seen, never_seen = (measure_pixel_adherence(generator, split=split, num_images=num_images,
                                                batch_size=len(DEMO_CAPTIONS) * PER_CAPTION)
                        for split in ("test", "held_out"))
    return adherence_lines(seen, never_seen)


def cmd_demo(args):
    start = time.perf_counter()
    trained = run_training(args, DEMO_CAPTIONS, grids=False)  # the demo draws its own grid
    out = Path(args.out)
    save_loss_curve(trained.run.losses, out / "loss.png")
    grid = out / "demo.png"
    generator = trained.generator
    draw_grid(generator, DEMO_CAPTIONS, grid, per_caption=PER_CAPTION)
    print(f"\nwrote {grid.resolve()}\n  (and {out / 'loss.png'}, {out / 'checkpoint.npz'})")
    if trained.recipe.data.dataset == "toy":  # the pixel judge reads the embedded set's drawings only
        print(f"\nhow well it follows captions (the pixel judge, on {DEMO_GRADED_IMAGES} captions of attribute "
              f"pairs seen in training and {DEMO_GRADED_IMAGES} of pairs never seen together):")
        for line in grade_demo(generator):
            print("  " + line)
    print(f"demo took {time.perf_counter() - start:.0f} s; draw more with\n"
          f"  minidiff sample --checkpoint {out / 'checkpoint.npz'} --caption \"a pink flower with a brown centre\"")


def cmd_sample(args):
    generator = with_upscalers(load(args.checkpoint, use_ema=not args.no_ema, autoencoder=args.autoencoder), args)
    path = Path(args.out) / "samples.png"
    draw_grid(generator, args.caption, path, per_caption=args.per_caption, seed=args.seed, **sampling_settings(args))
    print(f"wrote {path}")


def cmd_adherence(args):
    generator = with_upscalers(load(args.checkpoint, autoencoder=args.autoencoder), args)
    settings = sampling_settings(args)
    for guidance in args.guidance:
        generator.sampler_settings(**settings, guidance=guidance)  # every scale, before the first
    results = {}
    for split in ("test", "held_out"):
        for guidance in args.guidance:
            scores = measure_pixel_adherence(generator, split=split, num_images=args.num_images, seed=args.seed,
                                             guidance=guidance, **settings)
            results[f"{split}/guidance={guidance:g}"] = scores
            print(f"{split:9s} guidance {guidance:<4g} " + "  ".join(f"{k} {v:.0%}" for k, v in scores.items()))
    for guidance in args.guidance:  # which part each colour word belongs to
        swapped = swapped_colours_test(generator, seed=args.seed, guidance=guidance, **settings)
        results[f"swapped_colours/guidance={guidance:g}"] = swapped
        print(f"swapped colours, guidance {guidance:<4g}: {swapped['own colours']:.0%} of {swapped['birds']} birds "
              f"have each part in its own colour, {swapped['swapped']:.0%} the two the other way round")
    if args.out:
        path = Path(args.out) / "adherence.json"
        atomic_write(path, lambda f: f.write(json.dumps(results, indent=2).encode()))
        print(f"wrote {path}")


def cmd_evaluate(args):
    generator = with_upscalers(load(args.checkpoint, autoencoder=args.autoencoder), args)
    size = generator.output_shape[0]
    # At least DISTRACTORS + 1 captions for R-precision to rank each generated image's among.
    reference = reference_set(args.dataset, size, num_images=max(args.num_samples, DISTRACTORS + 1),
                              data_dir=args.data_dir)
    settings = sampling_settings(args)
    generator.sampler_settings(**settings)  # checked before a judge is trained
    judge = judge_for(args.checkpoint, args.dataset, size, path=args.judge, data_dir=args.data_dir,
                      progress=not args.quiet, steps=args.judge_steps)
    caption_judge = caption_judge_for(args.checkpoint, args.dataset, size, path=args.caption_judge,
                                      data_dir=args.data_dir, progress=not args.quiet, steps=args.judge_steps)
    inception = load_fid_inception(args.inception) if args.inception else None
    metrics, images = evaluate(generator, reference, judge, num_samples=args.num_samples, caption_judge=caption_judge,
                               inception=inception, progress=not args.quiet, seed=args.seed, **settings)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "metrics.json", lambda f: f.write(json.dumps(metrics, indent=2).encode()))
    shown = min(8, len(images))
    captions = [options[0] for options in reference.captions[:shown]]
    pairs = np.stack([images[:shown], reference.images[:shown]], axis=1).reshape(-1, *images.shape[1:])
    title = (f"{metrics['sampler']}, {metrics['sampling_steps']} steps, guidance {metrics['guidance']:g} "
             "(left: generated, right: real)")
    save_figure(captioned_grid(pairs, captions, title=title), out / "samples.png")
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))
    print("judge adherence: " + "  ".join(f"{k} {v:.0%}" for k, v in metrics["judge_adherence"].items()))
    print("judge accuracy on real images: "
          + "  ".join(f"{k} {v:.0%}" for k, v in metrics["judge_accuracy_on_real"].items()))
    print(f"R-precision (caption first of {DISTRACTORS + 1}): generated {metrics['r_precision_generated']:.1%}, "
          f"real images {metrics['r_precision_real']:.1%}; caption similarity {metrics['caption_similarity_generated']:.1f} "
          f"(real {metrics['caption_similarity_real']:.1f})")
    print(f"wrote {out / 'metrics.json'} and {out / 'samples.png'}")


def cmd_bench(args):
    if args.pytorch:
        try:
            import diffusers  # noqa: F401  (the optional bench extra)
            import torch  # noqa: F401
        except ImportError as e:
            raise SystemExit(f"--pytorch needs PyTorch and diffusers ({e}): pip install \"minidiff[bench]\"") from None
    rows = []
    print(table_header(args.pytorch))
    for backbone in args.backbone:
        for preset_name in args.preset:
            for size in args.image_size:
                for factor in args.latent_factor:
                    rows.append(benchmark(preset_name, size, args.batch_size, steps=args.steps,
                                          precision=args.precision, pytorch=args.pytorch and not factor,
                                          backbone=backbone, latent_factor=factor))
                    print(format_row(rows[-1]), flush=True)
    print(f"device: {rows[-1]['device']}")
    if args.out:
        path = Path(args.out) / "bench.json"
        atomic_write(path, lambda f: f.write(json.dumps(rows, indent=2).encode()))
        print(f"wrote {path}")


def cmd_course_student_copy(args):
    written = write_student_copy(args.out, args.chapters)
    print(f"wrote {len(written)} chapters, their reference solutions removed, to {args.out}")


def cmd_course_grade(args):
    start = time.perf_counter()
    gradebook = Path(args.out) / "grades.csv"
    rows = grade_class(args.submissions, gradebook, args.chapters, timeout=args.timeout)
    for row in rows:
        exercises = len(row) - 2
        print(f"{row['student']}: {row['correct']} of {exercises} exercises correct")
    print(f"graded {len(rows)} students in {time.perf_counter() - start:.0f} s; wrote {gradebook} "
          f"(the executed notebooks are in {Path(args.out) / 'graded'})")


# --- Arguments ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minidiff", description="Train and sample small text-to-image diffusion models.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train on the embedded dataset, then draw images for several captions",
                               description="Train the demo's recipe (minidiff recipes: demo) on the embedded flowers "
                               "and birds, write a grid of images generated from captions, some of them attribute "
                               "pairs never seen in training, then say how often its images show what their captions "
                               "ask.")
    add_recipe_options(demo, default="demo", fixed=True)
    add_length_options(demo)
    add_run_options(demo, out="runs/demo")
    add_data_access_options(demo)
    demo.set_defaults(run=cmd_demo)

    recipes = commands.add_parser("recipes", help="list the named recipes, one line each",
                                  description="The named recipes (minidiff/recipes/*.toml): their names, what they "
                                  "train, and what they are.")
    recipes.set_defaults(run=cmd_recipes)

    train_command = commands.add_parser("train", help="train a caption-conditioned model from a recipe",
                                        description="Train a model from a recipe; writes OUT/checkpoint.npz, "
                                        "OUT/loss.png and sample grids.")
    add_recipe_options(train_command, default="toy")
    add_length_options(train_command)
    add_run_options(train_command, out=None)
    add_data_access_options(train_command)
    train_command.set_defaults(run=cmd_train)

    ae = commands.add_parser("train-autoencoder", help="train the autoencoder a latent model diffuses in",
                             description="Train an autoencoder (images to latents f times smaller on a side, and "
                             "back) from a recipe (default: autoencoder); writes OUT/autoencoder.npz, OUT/loss.png "
                             "and OUT/reconstructions.png (held-out images beside their reconstructions). Then: "
                             "minidiff train --set data.image_size=64 model.autoencoder=OUT/autoencoder.npz trains a "
                             f"diffusion model on its latents (factors: {', '.join(map(str, FACTORS))}).")
    add_recipe_options(ae, default="autoencoder")
    add_length_options(ae)
    add_run_options(ae, out=None, devices=False)
    add_data_access_options(ae)
    ae.set_defaults(run=cmd_train_autoencoder)
    add_pretrain_text_command(commands)

    smp = commands.add_parser("sample", help="generate images from captions with a trained model",
                              description="Generate a PNG grid, OUT/samples.png: one row of images per caption.")
    smp.add_argument("--checkpoint", required=True, help="a checkpoint.npz written by train or demo")
    smp.add_argument("--caption", action="append", required=True, help="a caption; repeat for several rows")
    add_sampling_options(smp)
    add_autoencoder_option(smp)
    add_cascade_options(smp)
    smp.add_argument("--per-caption", type=at_least(1), default=PER_CAPTION,
                     help="images per caption (default: %(default)s)")
    smp.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their moving average")
    smp.add_argument("--out", default="samples", help="the folder to write samples.png to (default: %(default)s)")
    smp.set_defaults(run=cmd_sample)

    adh = commands.add_parser("adherence", help="measure how often samples show what their captions ask (embedded data)",
                              description="Generate images for captions of the embedded test and held-out splits "
                              "and measure, per attribute, the fraction whose drawn colours match the caption (the "
                              "pixel judge); then the swapped-colours test.")
    adh.add_argument("--checkpoint", required=True, help="a checkpoint trained on the embedded dataset")
    parameter_option(adh, measure_pixel_adherence, "num_images", "images per split and guidance scale",
                     type=at_least(1))
    adh.add_argument("--guidance", type=float, nargs="+", default=[1.0, 5.0],
                     help="guidance scales (default: 1 and 5)")
    add_sampling_options(adh, [name for name in ("sampler", "sampling_steps", "eta", "x0_clipping", "spacing")])
    add_autoencoder_option(adh)
    add_cascade_options(adh)
    adh.add_argument("--out", help="also write the scores to OUT/adherence.json")
    adh.set_defaults(run=cmd_adherence)

    ev = commands.add_parser("evaluate", help="generate images for held-out captions and measure them",
                             description="Generate one image per held-out caption and report, in OUT/metrics.json: "
                             "the Fréchet distance and KID in the features of a small judge trained on the dataset's "
                             "labels, caption adherence (how often the judge recognises what the caption names), "
                             "R-precision and caption similarity by a small CLIP trained on its images and captions and, "
                             "with --inception, FID, KID and Inception Score. Also writes OUT/samples.png.")
    ev.add_argument("--checkpoint", required=True, help="a checkpoint.npz written by train or demo")
    ev.add_argument("--dataset", default="toy", choices=[d for d in DATASETS if d != "folder"],
                    help="the dataset the model was trained on; its held-out captions are used (default: %(default)s)")
    ev.add_argument("--data-dir", help="where flowers or birds are on disk (default: $MINIDIFF_DATA_DIR, then ./data)")
    parameter_option(ev, evaluate, "num_samples", "images to generate; compare figures only at equal N",
                     type=at_least(2))
    add_sampling_options(ev)
    add_autoencoder_option(ev)
    add_cascade_options(ev)
    ev.add_argument("--judge", help="a judge file (judge-*.npz); default: the one beside the checkpoint, trained if missing")
    ev.add_argument("--caption-judge", help="a caption judge file (caption-judge-*.npz), for R-precision; default: the "
                    "one beside the checkpoint, trained if missing")
    ev.add_argument("--judge-steps", type=at_least(1), help="training steps of a new judge or caption judge (default: "
                    + ", ".join(f"{steps} for {kind} data" for kind, steps in JUDGE_STEPS.items()) + ")")
    ev.add_argument("--inception", help="the FID Inception weights (pt_inception-2015-12-05-6726825d.pth or a converted .npz)")
    ev.add_argument("--out", default="runs/evaluation", help="folder for metrics.json and samples.png (default: %(default)s)")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(run=cmd_evaluate)

    bench = commands.add_parser("bench", help="time training and sampling of model presets on this machine",
                                description="Train-step and sampling images/s, compile time, FLOP/s, MFU (where the "
                                "device's peak is known) and peak memory, per preset and image size.")
    bench.add_argument("--preset", nargs="+", default=["small"], choices=PRESETS, help="presets to time (default: small)")
    bench.add_argument("--backbone", nargs="+", default=["unet"], choices=tuple(BACKBONES),
                       help="denoisers to time: unet, dit (default: unet)")
    parameter_option(bench, preset, "image_size", "image sizes", type=at_least(1), nargs="+",
                     default=[default_of(preset, "image_size")])
    bench.add_argument("--latent-factor", type=int, nargs="+", default=[0], choices=(0, *FACTORS),
                       help="also time latent models of these images, their latents f times smaller on a side, e.g. "
                       "0 4 8 (0: the pixel model) (default: 0)")
    bench.add_argument("--batch-size", type=at_least(1), default=32, help="images per step (default: %(default)s)")
    parameter_option(bench, benchmark, "steps", "timed training steps after the compiling one", type=at_least(1))
    bench.add_argument("--precision", choices=PRECISIONS, default="float32",
                       help="float32, or bfloat16 mixed precision (default: %(default)s)")
    bench.add_argument("--pytorch", action="store_true", help="also time the same network built from HF diffusers "
                       "(PyTorch) on the same device, and print the ratio (needs the bench extra: pip install "
                       "\"minidiff[bench]\")")
    bench.add_argument("--out", help="also write the results to OUT/bench.json")
    bench.set_defaults(run=cmd_bench)

    course = commands.add_parser("course", help="the course in a classroom: a student copy of the chapters, "
                                 "and a grader for the notebooks a class hands in")
    course_commands = course.add_subparsers(dest="course_command", required=True)
    handout = course_commands.add_parser("student-copy", help="write the chapters with their reference solutions "
                                         "removed", description="Write every chapter in its student form: each "
                                         "exercise's reference solution removed, outputs cleared.")
    handout.add_argument("out", help="folder to write the chapters to")
    grade = course_commands.add_parser("grade", help="run each student's chapter notebooks and grade their exercises",
                                       description="Run every submitted notebook in a fresh kernel, in smoke mode, "
                                       "with a time limit, and write one CSV row per student: each exercise correct, "
                                       "wrong (with the check's reason), not attempted, error, timed out or not "
                                       "submitted. Writes only into OUT: OUT/grades.csv and OUT/graded/<student>/.")
    grade.add_argument("submissions", help="a folder holding one folder per student, each with that student's "
                       "chapter notebooks under the chapters' names (01_destroying_images.ipynb, ...)")
    grade.add_argument("--out", default="grades", help="the folder to write the gradebook, grades.csv, and the "
                       "executed notebooks into (default: %(default)s)")
    grade.add_argument("--timeout", type=positive_number, default=DEFAULT_TIMEOUT,
                       help="seconds each notebook may run (default: %(default)s)")
    for sub in (handout, grade):
        sub.add_argument("--chapters", help="the course's notebooks (default: the chapters/ folder of this checkout)")
    handout.set_defaults(run=cmd_course_student_copy)
    grade.set_defaults(run=cmd_course_grade)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if getattr(args, "multi_host", False):
        initialize_distributed()  # before anything starts JAX's devices, as jax.distributed requires
    one_device_per_cpu_core()  # before JAX starts: on a CPU, training then uses every core
    enable_compilation_cache()
    try:
        args.run(args)
    except (CaptionError, CheckpointError, TrainingDiverged, ValueError, FileNotFoundError) as error:
        print(f"minidiff {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nminidiff {args.command}: interrupted; the last checkpoint written is intact "
              "(continue with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
