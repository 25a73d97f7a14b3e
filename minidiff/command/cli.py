"""The `minidiff` command: demo, train, train-autoencoder, pretrain-text, sample, adherence, evaluate, bench,
course.

    minidiff demo                                   # train on the embedded data, then draw captions
    minidiff train --out runs/flowers --steps 2000
    minidiff sample --checkpoint runs/flowers/checkpoint.npz --caption "a red flower with a yellow centre"
    minidiff course grade submissions/ --out grades.csv   # run and grade a class's chapter notebooks

Each command is a short function that calls the library; the options are in
`options.py`. Errors the user can fix (a missing file, a bad value, an empty
caption) end with one line saying what is wrong and exit status 2.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from minidiff.captions import CaptionError
from minidiff.course.grading import DEFAULT_TIMEOUT, grade_class, write_student_copy
from minidiff.command.benchmark import benchmark, format_row, table_header
from minidiff.autoencoder import FACTORS, AutoencoderConfig, autoencoder_preset
from minidiff.command.options import (add_autoencoder_option, add_cascade_options, add_data_options,
                                      add_sampling_options, add_training_options, at_least, default_of, field_option,
                                      parameter_option, positive_number, sampling_settings)
from minidiff.command.pretrain_text import add_pretrain_text_command
from minidiff.command.runs import draw_grid, run_autoencoder_training, run_training, with_upscalers
from minidiff.datasets import DATASETS
from minidiff.evaluation.evaluate import JUDGE_STEPS, evaluate, judge_for, reference_set
from minidiff.evaluation.inception import load_fid_inception
from minidiff.evaluation.pixel_judge import adherence_lines, measure_pixel_adherence
from minidiff.evaluation.word_order import swapped_colours_test
from minidiff.evaluation.plotting import captioned_grid, save_figure, save_loss_curve
from minidiff.generator import SAMPLING_SETTINGS, Generator, load
from minidiff.latents import AutoencoderTraining
from minidiff.machinery.atomic import atomic_write
from minidiff.machinery.checkpoints import CheckpointError
from minidiff.machinery.compilation import enable_compilation_cache
from minidiff.machinery.sharding import initialize_distributed, one_device_per_cpu_core
from minidiff.model import BACKBONES, PRESETS, preset
from minidiff.training import PRECISIONS, TrainConfig, TrainingDiverged

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
# The demo trains for minutes, not steps, so that it ends in time on any CPU. Its recipe won measured
# races on that budget (`benchmarks/demo_race.py`; the README's "The demo" and "Transformers and flows"
# have the tables). The tiny presets make several times the steps of the small ones in the same minutes,
# and in a budget this short steps matter more than width; batches of 32 buy more steps again. Of the
# tiny models, the DiT trained as a straight-line flow follows its captions best. With --backbone unet,
# its U-Net attends in the blocks of its 8x8 level too (at 32 px, the lowest; by default only its middle
# block attends), which lets the caption colour a flower's centre or a bird's wing, not only the whole
# object. Guidance stronger than usual, which a briefly trained model follows its captions more often with.
DEMO_MINUTES = 5.0
DEMO_RECIPE = {"preset": "tiny", "backbone": "dit", "objective": "flow", "attention_at": [8], "batch_size": 32,
               "learning_rate": 3e-3}
DEMO_GUIDANCE = 5.0
DEMO_GRADED_IMAGES = 96  # per split: images the demo draws to grade itself


# --- Commands ------------------------------------------------------------------------


def cmd_train(args):
    state = run_training(args, DEMO_CAPTIONS)
    save_loss_curve(state.losses, Path(args.out) / "loss.png")
    print(f"wrote {Path(args.out) / 'checkpoint.npz'} and {Path(args.out) / 'loss.png'}")


def cmd_train_autoencoder(args):
    run_autoencoder_training(args)


def grade_demo(generator: Generator, num_images: int = DEMO_GRADED_IMAGES, **settings) -> list[str]:
    """How well the demo's model follows captions, as lines to print: the pixel judge on `num_images`
    captions of the embedded set's test split (attribute pairs seen in training) and as many of its
    held-out split (pairs never seen), drawn with the grid's settings (and its batch size, so the grid's
    compiled sampler serves)."""
    seen, never_seen = (measure_pixel_adherence(generator, split=split, num_images=num_images,
                                                batch_size=len(DEMO_CAPTIONS) * default_of(draw_grid, "per_caption"),
                                                **settings) for split in ("test", "held_out"))
    return adherence_lines(seen, never_seen)


def cmd_demo(args):
    start = time.perf_counter()
    settings = sampling_settings(args)
    objective = args.objective or args.recipe.get("objective", "diffusion")
    Generator.settings(objective, **settings)  # checked before minutes of training, not after
    if args.upscale_from:
        raise ValueError("the demo draws from captions alone: train an upscaler with minidiff train --upscale-from")
    state = run_training(args, DEMO_CAPTIONS)
    out = Path(args.out)
    save_loss_curve(state.losses, out / "loss.png")
    grid = out / "demo.png"
    generator = Generator.from_training(state)
    draw_grid(generator, DEMO_CAPTIONS, grid, **settings)
    print(f"\nwrote {grid.resolve()}\n  (and {out / 'loss.png'}, {out / 'checkpoint.npz'})")
    if args.dataset == "toy":  # the pixel judge reads the embedded set's drawings only
        print(f"\nhow well it follows captions (the pixel judge, on {DEMO_GRADED_IMAGES} captions of attribute "
              f"pairs seen in training and {DEMO_GRADED_IMAGES} of pairs never seen together):")
        for line in grade_demo(generator, **settings):
            print("  " + line)
    print(f"demo took {time.perf_counter() - start:.0f} s; draw more with\n"
          f"  minidiff sample --checkpoint {out / 'checkpoint.npz'} --caption \"a pink flower with a brown centre\"")


def cmd_sample(args):
    generator = with_upscalers(load(args.checkpoint, use_ema=not args.no_ema, autoencoder=args.autoencoder), args)
    draw_grid(generator, args.caption, args.out, per_caption=args.per_caption, **sampling_settings(args))
    print(f"wrote {args.out}")


def cmd_adherence(args):
    generator = with_upscalers(load(args.checkpoint, autoencoder=args.autoencoder), args)
    settings = sampling_settings(args)
    seed = settings.pop("seed")
    for guidance in args.guidance:
        Generator.settings(generator.objective, **settings, guidance=guidance)  # every scale, before the first
    results = {}
    for split in ("test", "held_out"):
        for guidance in args.guidance:
            scores = measure_pixel_adherence(generator, split=split, num_images=args.num_images, seed=seed,
                                             guidance=guidance, **settings)
            results[f"{split}/guidance={guidance:g}"] = scores
            print(f"{split:9s} guidance {guidance:<4g} " + "  ".join(f"{k} {v:.0%}" for k, v in scores.items()))
    for guidance in args.guidance:  # which part each colour word belongs to
        swapped = swapped_colours_test(generator, seed=seed, guidance=guidance, **settings)
        results[f"swapped_colours/guidance={guidance:g}"] = swapped
        print(f"swapped colours, guidance {guidance:<4g}: {swapped['own colours']:.0%} of {swapped['birds']} birds "
              f"have each part in its own colour, {swapped['swapped']:.0%} the two the other way round")
    if args.out:
        atomic_write(args.out, lambda f: f.write(json.dumps(results, indent=2).encode()))
        print(f"wrote {args.out}")


def cmd_evaluate(args):
    generator = with_upscalers(load(args.checkpoint, autoencoder=args.autoencoder), args)
    size = generator.output_shape[0]
    reference = reference_set(args.dataset, size, num_images=args.num_samples, data_dir=args.data_dir)
    settings = Generator.settings(generator.objective, **sampling_settings(args))  # checked before a judge is trained
    judge = judge_for(args.checkpoint, args.dataset, size, path=args.judge, data_dir=args.data_dir,
                      progress=not args.quiet, steps=args.judge_steps)
    inception = load_fid_inception(args.inception) if args.inception else None
    metrics, images = evaluate(generator, reference, judge, num_samples=args.num_samples, inception=inception,
                               progress=not args.quiet, **settings)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "metrics.json", lambda f: f.write(json.dumps(metrics, indent=2).encode()))
    shown = min(8, len(images))
    captions = [options[0] for options in reference.captions[:shown]]
    pairs = np.stack([images[:shown], reference.images[:shown]], axis=1).reshape(-1, *images.shape[1:])
    title = (f"{settings['sampler']}, {settings['steps']} steps, guidance {settings['guidance']:g} "
             "(left: generated, right: real)")
    save_figure(captioned_grid(pairs, captions, title=title), out / "samples.png")
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))
    print("judge adherence: " + "  ".join(f"{k} {v:.0%}" for k, v in metrics["judge_adherence"].items()))
    print("judge accuracy on real images: "
          + "  ".join(f"{k} {v:.0%}" for k, v in metrics["judge_accuracy_on_real"].items()))
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
        atomic_write(args.out, lambda f: f.write(json.dumps(rows, indent=2).encode()))
        print(f"wrote {args.out}")


def cmd_course_student_copy(args):
    written = write_student_copy(args.out, args.chapters)
    print(f"wrote {len(written)} chapters, their reference solutions removed, to {args.out}")


def cmd_course_grade(args):
    start = time.perf_counter()
    rows = grade_class(args.submissions, args.out, args.chapters, timeout=args.timeout)
    for row in rows:
        exercises = len(row) - 2
        print(f"{row['student']}: {row['correct']} of {exercises} exercises correct")
    print(f"graded {len(rows)} students in {time.perf_counter() - start:.0f} s; wrote {args.out} "
          f"(the executed notebooks are in {Path(args.out).parent / 'graded'})")


# --- Arguments ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minidiff", description="Train and sample small text-to-image diffusion models.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train on the embedded dataset, then draw images for several captions",
                               description=f"Train a model on the embedded flowers and birds for {DEMO_MINUTES:g} "
                               "minutes, write a grid of images generated from captions, some of them attribute pairs "
                               "never seen in training, then say how often its images show what their captions ask.")
    add_training_options(demo, {"minutes": DEMO_MINUTES}, out="runs/demo", sample_every=0, recipe=DEMO_RECIPE)
    add_sampling_options(demo, ["guidance"], guidance=DEMO_GUIDANCE)
    demo.set_defaults(run=cmd_demo)

    train_command = commands.add_parser("train", help="train a caption-conditioned model",
                                        description="Train a model; writes OUT/checkpoint.npz, OUT/loss.png and "
                                        "sample grids.")
    add_training_options(train_command, {"steps": TrainConfig.steps}, out="runs/train", sample_every=500)
    train_command.set_defaults(run=cmd_train)

    ae = commands.add_parser("train-autoencoder", help="train the autoencoder a latent model diffuses in",
                             description="Train an autoencoder (images to latents f times smaller on a side, and "
                             "back); writes OUT/autoencoder.npz, OUT/loss.png and OUT/reconstructions.png (held-out "
                             "images beside their reconstructions). Then: minidiff train --autoencoder "
                             "OUT/autoencoder.npz trains a diffusion model on its latents.")
    add_data_options(ae)
    shape = ae.add_argument_group("autoencoder")
    parameter_option(shape, autoencoder_preset, "image_size", "image side in pixels", type=at_least(1))
    shape.add_argument("--factor", type=int, choices=FACTORS, help="how many times smaller the latent is on each side "
                       "(default: 4)")
    shape.add_argument("--latent-channels", type=at_least(1),
                       help=f"channels of the latent (default: {AutoencoderConfig.latent_channels})")
    shape.add_argument("--kl-weight", type=float, help="weight of the KL term that keeps the latent near a standard "
                       f"Gaussian (default: {AutoencoderConfig.kl_weight:g})")
    training = ae.add_argument_group("training")
    either = training.add_mutually_exclusive_group()
    either.add_argument("--steps", type=at_least(1), help=f"train for this many steps (default: "
                        f"{AutoencoderTraining.steps}; with --resume, the run's own)")
    either.add_argument("--minutes", type=positive_number, help="train for this many minutes, compiling not counted")
    for name, help in (("batch_size", "images per step"), ("learning_rate", "peak AdamW learning rate"),
                       ("seed", "seed of initialisation and batches"),
                       ("checkpoint_every", "steps between checkpoints, 0 = only at the end")):
        field_option(training, AutoencoderTraining, name, help)
    training.add_argument("--out", default="runs/autoencoder", help="output folder (default: %(default)s)")
    training.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    training.add_argument("--quiet", action="store_true", help="no progress bar")
    ae.set_defaults(run=cmd_train_autoencoder)
    add_pretrain_text_command(commands)

    smp = commands.add_parser("sample", help="generate images from captions with a trained model",
                              description="Generate a PNG grid: one row of images per caption.")
    smp.add_argument("--checkpoint", required=True, help="a checkpoint.npz written by train or demo")
    smp.add_argument("--caption", action="append", required=True, help="a caption; repeat for several rows")
    add_sampling_options(smp)
    add_autoencoder_option(smp)
    add_cascade_options(smp)
    parameter_option(smp, draw_grid, "per_caption", "images per caption", type=at_least(1))
    smp.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their moving average")
    smp.add_argument("--out", default="samples.png", help="PNG to write (default: %(default)s)")
    smp.set_defaults(run=cmd_sample)

    adh = commands.add_parser("adherence", help="measure how often samples show what their captions ask (embedded data)",
                              description="Generate images for captions of the embedded test and held-out splits "
                              "and measure, per attribute, the fraction whose drawn colours match the caption (the "
                              "pixel judge).")
    adh.add_argument("--checkpoint", required=True, help="a checkpoint trained on the embedded dataset")
    parameter_option(adh, measure_pixel_adherence, "num_images", "images per split and guidance scale",
                     type=at_least(1))
    adh.add_argument("--guidance", type=float, nargs="+", default=[1.0, DEMO_GUIDANCE],
                     help=f"guidance scales (default: 1 and the demo's {DEMO_GUIDANCE:g})")
    add_sampling_options(adh, [name for name in SAMPLING_SETTINGS if name != "guidance"])
    add_autoencoder_option(adh)
    add_cascade_options(adh)
    adh.add_argument("--out", help="also write the scores to this JSON file")
    adh.set_defaults(run=cmd_adherence)

    ev = commands.add_parser("evaluate", help="generate images for held-out captions and measure them",
                             description="Generate one image per held-out caption and report, in OUT/metrics.json: "
                             "the Fréchet distance and KID in the features of a small judge trained on the dataset's "
                             "labels, caption adherence (how often the judge recognises what the caption names) and, "
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
    ev.add_argument("--judge-steps", type=at_least(1), help="training steps of a new judge (default: "
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
    parameter_option(bench, benchmark, "steps", "timed train steps after the compiling one", type=at_least(1))
    field_option(bench, TrainConfig, "precision", "float32, or bfloat16 mixed precision", choices=PRECISIONS)
    bench.add_argument("--pytorch", action="store_true", help="also time the same network built from HF diffusers "
                       "(PyTorch) on the same device, and print the ratio (needs the bench extra: pip install "
                       "\"minidiff[bench]\")")
    bench.add_argument("--out", help="also write the results to this JSON file")
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
                                       "submitted. Writes only beside the CSV: the CSV and graded/<student>/.")
    grade.add_argument("submissions", help="a folder holding one folder per student, each with that student's "
                       "chapter notebooks under the chapters' names (01_destroying_images.ipynb, ...)")
    grade.add_argument("--out", default="grades.csv", help="the gradebook to write (default: %(default)s)")
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
    except (CaptionError, CheckpointError, TrainingDiverged, ValueError, FileNotFoundError, FloatingPointError) as error:
        print(f"minidiff {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nminidiff {args.command}: interrupted; the last checkpoint written is intact "
              "(continue with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
