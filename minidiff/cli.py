"""The `minidiff` command: train, sample, demo, adherence.

    minidiff demo                                   # train on the embedded data, then draw captions
    minidiff train --out runs/flowers --steps 2000
    minidiff sample --checkpoint runs/flowers/checkpoint.npz --caption "a red flower with a yellow centre"
"""

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

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


def generate_grid(model, tokenizer, schedule, captions, path, *, per_caption=6, sampler="ddim", steps=50,
                  guidance=3.0, eta=0.0, seed=0, title=None):
    """Sample `per_caption` images for each caption and save them as one captioned PNG grid."""
    import numpy as np

    from minidiff.plotting import captioned_grid, save_figure
    from minidiff.sampling import sample
    from minidiff.sharding import mesh_for_batch

    for caption in captions:
        unknown = tokenizer.unknown_words(caption)
        if unknown:
            print(f"note: the model never saw the word(s) {', '.join(unknown)} in training; "
                  f"they are read as 'unknown' in {caption!r}", file=sys.stderr)
    ids = np.repeat(tokenizer.encode_batch(captions), per_caption, axis=0)
    images = sample(model, schedule, ids, tokenizer.empty(1), seed, num_steps=steps, sampler=sampler,
                    eta=eta, guidance_scale=guidance, mesh=mesh_for_batch(len(ids)))
    title = title or f"{sampler}, {steps} steps, guidance {guidance:g}"
    save_figure(captioned_grid(np.asarray(images), captions, title=title), path)
    return np.asarray(images)


# --- Commands ----------------------------------------------------------------------


def _train_config(args, horizontal_flip: bool):
    from minidiff.training import TrainConfig

    return TrainConfig(
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed,
        sample_every=args.sample_every, checkpoint_every=args.checkpoint_every, horizontal_flip=horizontal_flip,
        precision=args.precision,
    )


def _captions_to_show(dataset, tokenizer, preferred, count=4):
    """The preferred captions the model knows every word of; else the first captions of a few classes."""
    known = [c for c in preferred if not tokenizer.unknown_words(c)]
    if known:
        return known
    shown, classes = [], set()
    for options, label in zip(dataset.captions, dataset.labels.get("class", range(len(dataset)))):
        if int(label) not in classes and len(shown) < count:
            classes.add(int(label))
            shown.append(options[0])
    return shown


def run_training(args, captions_to_show=DEMO_CAPTIONS):
    """Train as `minidiff train` does; returns the final TrainState."""
    if args.multi_host:
        from minidiff.sharding import initialize_distributed

        initialize_distributed()
        args.data_parallel = True
    from minidiff.captions import Tokenizer
    from minidiff.checkpoints import Checkpoint
    from minidiff.corruption import make_schedule
    from minidiff.datasets import load_dataset
    from minidiff.model import count_parameters, preset
    from minidiff.plotting import save_loss_curve
    from minidiff.training import new_train_state, resume_train_state, train

    out = Path(args.out)
    checkpoint = out / "checkpoint.npz"
    size = Checkpoint(checkpoint).header["model_config"]["unet"]["image_size"] if args.resume else args.image_size
    t0 = time.perf_counter()
    dataset = load_dataset(args.dataset, args.split, image_size=size, num_images=args.num_images, seed=args.data_seed,
                           data_dir=args.data_dir, use_cache=not args.no_cache, download=args.download)
    print(f"dataset {dataset.name}: {len(dataset)} images of {size}x{size} ({time.perf_counter() - t0:.1f} s)")
    config = _train_config(args, horizontal_flip=dataset.flip_ok)
    if args.resume:
        state = resume_train_state(checkpoint, config)
        print(f"resuming {checkpoint} at step {state.step} of {config.steps}")
    else:
        tokenizer = Tokenizer.from_captions(dataset.all_captions())
        overrides = {"attention_resolutions": tuple(args.attention_at)} if args.attention_at else {}
        model_config = preset(args.preset, tokenizer.vocab_size, image_size=size, max_length=tokenizer.max_length,
                              **overrides)
        model_config = dataclasses.replace(model_config, prediction=args.prediction)
        state = new_train_state(model_config, tokenizer, config)
    unet = state.model.config.unet
    attended = [f"{n}x{n}" for n in unet.level_sizes if n in unet.attention_resolutions] + ["the middle"]
    print(f"model: preset {args.preset if not args.resume else '(from checkpoint)'}, "
          f"{count_parameters(state.model) / 1e6:.2f} M parameters, predicts {state.model.config.prediction}, "
          f"attention: {', '.join(attended)}")
    schedule = make_schedule(config.schedule, config.num_timesteps)
    captions = _captions_to_show(dataset, state.tokenizer, captions_to_show)

    def report(state):
        grid = out / f"samples_step{state.step:06d}.png"
        generate_grid(state.ema, state.tokenizer, schedule, captions, grid, per_caption=4, steps=25,
                      title=f"step {state.step}: ddim, 25 steps, guidance 3")
        save_loss_curve(state.losses, out / "loss.png")

    import jax

    from minidiff.sharding import data_mesh, mesh_for_batch

    # Every device of this host takes a share of each batch (a CPU counts one device per core, see `main`).
    mesh = data_mesh() if args.data_parallel else mesh_for_batch(config.batch_size)
    if mesh is not None:
        print(f"data-parallel over {mesh.size} devices ({jax.devices()[0].platform}): "
              f"{config.batch_size // mesh.size} images per device per step")
    out.mkdir(parents=True, exist_ok=True)
    return train(state, dataset, out_dir=out, on_report=report if args.sample_every else None, progress=not args.quiet,
                 mesh=mesh)


def cmd_train(args):
    from minidiff.plotting import save_loss_curve

    state = run_training(args)
    save_loss_curve(state.losses, Path(args.out) / "loss.png")
    print(f"wrote {Path(args.out) / 'checkpoint.npz'} and {Path(args.out) / 'loss.png'}")


def cmd_sample(args):
    from minidiff.training import load_for_sampling

    model, tokenizer, schedule = load_for_sampling(args.checkpoint, use_ema=not args.no_ema)
    for caption in args.caption:
        tokenizer.encode(caption)  # fail early, with a clear message, on an empty or too long caption
    generate_grid(model, tokenizer, schedule, args.caption, args.out, per_caption=args.per_caption,
                  sampler=args.sampler, steps=args.steps, guidance=args.guidance, eta=args.eta, seed=args.seed)
    print(f"wrote {args.out}")


def cmd_demo(args):
    start = time.perf_counter()
    state = run_training(args)
    from minidiff.corruption import make_schedule
    from minidiff.plotting import save_loss_curve

    out = Path(args.out)
    save_loss_curve(state.losses, out / "loss.png")
    schedule = make_schedule(state.config.schedule, state.config.num_timesteps)
    grid = out / "demo.png"
    generate_grid(state.ema, state.tokenizer, schedule, DEMO_CAPTIONS, grid, per_caption=6, guidance=args.guidance)
    print(f"\nwrote {grid.resolve()}\n  (and {out / 'loss.png'}, {out / 'checkpoint.npz'})")
    print(f"demo took {time.perf_counter() - start:.0f} s; draw more with\n"
          f"  minidiff sample --checkpoint {out / 'checkpoint.npz'} --caption \"a pink flower with a brown centre\"")


def cmd_adherence(args):
    from minidiff.adherence import measure_adherence
    from minidiff.training import load_for_sampling

    model, tokenizer, schedule = load_for_sampling(args.checkpoint)
    results = {}
    for split in ("test", "held_out"):
        for guidance in args.guidance:
            scores = measure_adherence(model, tokenizer, schedule, split=split, num_images=args.num_images,
                                       guidance_scale=guidance, num_steps=args.steps, seed=args.seed)
            results[f"{split}/guidance={guidance:g}"] = scores
            print(f"{split:9s} guidance {guidance:<4g} " + "  ".join(f"{k} {v:.0%}" for k, v in scores.items()))
    if args.out:
        from minidiff.atomic import atomic_write

        atomic_write(args.out, lambda f: f.write(json.dumps(results, indent=2).encode()))
        print(f"wrote {args.out}")


def cmd_evaluate(args):
    import numpy as np

    from minidiff.atomic import atomic_write
    from minidiff.evaluation import evaluate, judge_path_beside, load_or_train_judge, reference_set
    from minidiff.plotting import captioned_grid, save_figure
    from minidiff.training import load_for_sampling

    model, tokenizer, schedule = load_for_sampling(args.checkpoint)
    size = model.config.unet.image_size
    reference = reference_set(args.dataset, size, num_images=args.num_samples, data_dir=args.data_dir)
    judge = load_or_train_judge(args.judge or judge_path_beside(args.checkpoint, args.dataset, size), args.dataset, size,
                                data_dir=args.data_dir, steps=args.judge_steps, must_exist=bool(args.judge),
                                progress=not args.quiet)
    inception = None
    if args.inception:
        from minidiff.inception import load_fid_inception

        inception = load_fid_inception(args.inception)
    metrics, images = evaluate(model, tokenizer, schedule, reference, judge, num_samples=args.num_samples,
                               sampler=args.sampler, num_steps=args.steps, guidance_scale=args.guidance,
                               seed=args.seed, inception=inception, progress=not args.quiet)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "metrics.json", lambda f: f.write(json.dumps(metrics, indent=2).encode()))
    shown = min(8, len(images))
    captions = [options[0] for options in reference.captions[:shown]]
    pairs = np.stack([images[:shown], reference.images[:shown]], axis=1).reshape(-1, *images.shape[1:])
    title = f"{args.sampler}, {args.steps} steps, guidance {args.guidance:g} (left: generated, right: real)"
    save_figure(captioned_grid(pairs, captions, title=title), out / "samples.png")
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))
    print("adherence: " + "  ".join(f"{k} {v:.0%}" for k, v in metrics["adherence"].items()))
    print("judge accuracy on real images: " + "  ".join(f"{k} {v:.0%}" for k, v in metrics["judge_accuracy_on_real"].items()))
    print(f"wrote {out / 'metrics.json'} and {out / 'samples.png'}")


def cmd_bench(args):
    from minidiff.atomic import atomic_write
    from minidiff.benchmark import benchmark, format_row, table_header

    if args.pytorch:
        try:
            import diffusers  # noqa: F401
            import torch  # noqa: F401
        except ImportError as e:
            raise SystemExit(f"--pytorch needs PyTorch and diffusers ({e}): pip install \"minidiff[bench]\"") from None
    rows = []
    print(table_header(args.pytorch))
    for preset_name in args.preset:
        for size in args.image_size:
            rows.append(benchmark(preset_name, size, args.batch_size, steps=args.steps, precision=args.precision,
                                  pytorch=args.pytorch))
            print(format_row(rows[-1]), flush=True)
    print(f"device: {rows[-1]['device']}")
    if args.out:
        atomic_write(args.out, lambda f: f.write(json.dumps(rows, indent=2).encode()))
        print(f"wrote {args.out}")


# --- Arguments ---------------------------------------------------------------------


def _add_training_options(p, steps, out, sample_every):
    from minidiff.datasets import DATASETS
    from minidiff.model import PRESETS

    p.add_argument("--dataset", default="toy", choices=DATASETS,
                   help="training data (default: %(default)s, the embedded flowers and birds; flowers = Oxford-102, "
                   "birds = CUB-200-2011, folder = your images with captions)")
    p.add_argument("--data-dir", help="where flowers or birds are on disk (or the folder for 'folder'); "
                   "default: $MINIDIFF_DATA_DIR, then ./data")
    p.add_argument("--split", default="train", help="which images to train on: train, val, test, eval, train_classes, "
                   "test_classes or all for flowers and birds; train, test or held_out for the embedded set (default: %(default)s)")
    p.add_argument("--download", action="store_true", help="let tensorflow-datasets download flowers or birds if no local copy is found")
    p.add_argument("--no-cache", action="store_true", help="decode the images again instead of using the cache ($MINIDIFF_CACHE_DIR or ~/.cache/minidiff)")
    p.add_argument("--num-images", type=int, default=8000, help="images to generate for the embedded dataset (default: %(default)s)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the embedded dataset (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=32, help="image side in pixels (default: %(default)s)")
    p.add_argument("--preset", default="small", choices=PRESETS, help="model size: tiny (tests), small (CPU), base (GPU) (default: %(default)s)")
    p.add_argument("--attention-at", type=int, nargs="+", metavar="SIZE",
                   help="feature-map sizes (the image side over the patch size, halved at each level) whose blocks "
                   "get self- and cross-attention, e.g. 8 4 (default: the preset's: 4 for tiny and small)")
    p.add_argument("--prediction", default="v", choices=("eps", "x0", "v"), help="what the network predicts (default: %(default)s)")
    p.add_argument("--steps", type=int, default=steps, help="optimisation steps (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default: %(default)s)")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="peak AdamW learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches and noise (default: %(default)s)")
    p.add_argument("--out", default=out, help="output folder for checkpoint, loss curve and samples (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out (to --steps)")
    p.add_argument("--sample-every", type=int, default=sample_every, help="steps between sample grids, 0 = none during training (default: %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=250, help="steps between checkpoints (default: %(default)s)")
    p.add_argument("--precision", default="float32", choices=("float32", "bfloat16"),
                   help="bfloat16: mixed precision (bf16 compute, float32 master weights), for GPUs and TPUs (default: %(default)s)")
    p.add_argument("--data-parallel", action="store_true", help="split each batch over every device (GPUs, TPU cores, "
                   "CPU cores) and stop if it does not split evenly; without it, each batch is split over as many "
                   "of this host's devices as it evenly can")
    p.add_argument("--multi-host", action="store_true", help="join a multi-host run first (jax.distributed.initialize); "
                   "implies --data-parallel over every host's devices")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    from minidiff.sampling import SAMPLERS

    parser = argparse.ArgumentParser(prog="minidiff", description="Train and sample small text-to-image diffusion models.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train on the embedded dataset, then draw images for several captions",
                               description="Train the small model on the embedded flowers and birds (about 7 minutes "
                               "on a 2-core CPU), then write a grid of images generated from captions, some of them "
                               "attribute pairs never seen in training.")
    # 1500 steps: at 600 the model draws each caption's main colour and not yet its parts (centres,
    # wings); the wings appear between 1200 and 1500 (the README's "How well it follows captions").
    _add_training_options(demo, steps=1500, out="runs/demo", sample_every=0)
    # 5 rather than the usual 3: a model trained for minutes follows its captions
    # more often with stronger guidance (measured with `minidiff adherence`).
    demo.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default: %(default)s)")
    demo.set_defaults(run=cmd_demo)

    train = commands.add_parser("train", help="train a caption-conditioned model", description="Train a model; "
                                "writes OUT/checkpoint.npz, OUT/loss.png and sample grids.")
    _add_training_options(train, steps=2000, out="runs/train", sample_every=500)
    train.set_defaults(run=cmd_train)

    smp = commands.add_parser("sample", help="generate images from captions with a trained model",
                              description="Generate a PNG grid: one row of images per caption.")
    smp.add_argument("--checkpoint", required=True, help="a checkpoint.npz written by train or demo")
    smp.add_argument("--caption", action="append", required=True, help="a caption; repeat for several rows")
    smp.add_argument("--sampler", default="ddim", choices=SAMPLERS, help="update rule (default: %(default)s)")
    smp.add_argument("--steps", type=int, default=50, help="denoising steps (default: %(default)s)")
    smp.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance: 1 = none, 0 = ignore the caption (default: %(default)s)")
    smp.add_argument("--eta", type=float, default=0.0, help="DDIM noise: 0 = deterministic, 1 = like DDPM (default: %(default)s)")
    smp.add_argument("--per-caption", type=int, default=6, help="images per caption (default: %(default)s)")
    smp.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    smp.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their moving average")
    smp.add_argument("--out", default="samples.png", help="PNG to write (default: %(default)s)")
    smp.set_defaults(run=cmd_sample)

    adh = commands.add_parser("adherence", help="measure how often samples show what their captions ask (embedded data)",
                              description="Generate images for captions of the embedded test and held-out splits and "
                              "measure, per attribute, the fraction whose drawn colours match the caption.")
    adh.add_argument("--checkpoint", required=True, help="a checkpoint trained on the embedded dataset")
    adh.add_argument("--num-images", type=int, default=128, help="images per split and guidance scale (default: %(default)s)")
    adh.add_argument("--guidance", type=float, nargs="+", default=[1.0, 5.0], help="guidance scales (default: 1 5, the demo's)")
    adh.add_argument("--steps", type=int, default=50, help="DDIM steps (default: %(default)s)")
    adh.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    adh.add_argument("--out", help="also write the scores to this JSON file")
    adh.set_defaults(run=cmd_adherence)

    from minidiff.datasets import DATASETS

    ev = commands.add_parser("evaluate", help="generate images for held-out captions and measure them",
                             description="Generate one image per held-out caption and report, in OUT/metrics.json: "
                             "the Fréchet distance and KID in the features of a small judge trained on the dataset's "
                             "labels, caption adherence (how often the judge recognises what the caption names) and, "
                             "with --inception, FID, KID and Inception Score. Also writes OUT/samples.png.")
    ev.add_argument("--checkpoint", required=True, help="a checkpoint.npz written by train or demo")
    ev.add_argument("--dataset", default="toy", choices=[d for d in DATASETS if d != "folder"],
                    help="the dataset the model was trained on; its held-out captions are used (default: %(default)s)")
    ev.add_argument("--data-dir", help="where flowers or birds are on disk (default: $MINIDIFF_DATA_DIR, then ./data)")
    ev.add_argument("--num-samples", type=int, default=256, help="images to generate; compare figures only at equal N (default: %(default)s)")
    ev.add_argument("--sampler", default="ddim", choices=SAMPLERS, help="update rule (default: %(default)s)")
    ev.add_argument("--steps", type=int, default=50, help="sampling steps (Heun makes 2 network calls per step) (default: %(default)s)")
    ev.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (default: %(default)s)")
    ev.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    ev.add_argument("--judge", help="a judge file (judge-*.npz); default: the one beside the checkpoint, trained if missing")
    ev.add_argument("--judge-steps", type=int, default=800, help="training steps of a new judge (default: %(default)s)")
    ev.add_argument("--inception", help="the FID Inception weights (pt_inception-2015-12-05-6726825d.pth or a converted .npz)")
    ev.add_argument("--out", default="runs/evaluation", help="folder for metrics.json and samples.png (default: %(default)s)")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(run=cmd_evaluate)

    from minidiff.model import PRESETS

    bench = commands.add_parser("bench", help="time training and sampling of model presets on this machine",
                                description="Train-step and sampling images/s, compile time, FLOP/s, MFU (where the "
                                "device's peak is known) and peak memory, per preset and image size.")
    bench.add_argument("--preset", nargs="+", default=["small"], choices=PRESETS, help="presets to time (default: small)")
    bench.add_argument("--image-size", type=int, nargs="+", default=[32], help="image sizes (default: 32)")
    bench.add_argument("--batch-size", type=int, default=32, help="images per step (default: %(default)s)")
    bench.add_argument("--steps", type=int, default=10, help="timed train steps after the compiling one (default: %(default)s)")
    bench.add_argument("--precision", default="float32", choices=("float32", "bfloat16"), help="(default: %(default)s)")
    bench.add_argument("--pytorch", action="store_true", help="also time the same network built from HF diffusers "
                       "(PyTorch) on the same device, and print the ratio (needs the bench extra: pip install \"minidiff[bench]\")")
    bench.add_argument("--out", help="also write the results to this JSON file")
    bench.set_defaults(run=cmd_bench)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from minidiff.compilation import enable_compilation_cache
    from minidiff.sharding import one_device_per_cpu_core

    one_device_per_cpu_core()  # before JAX starts: on a CPU, training then uses every core
    enable_compilation_cache()
    from minidiff.captions import CaptionError
    from minidiff.checkpoints import CheckpointError
    from minidiff.training import TrainingDiverged

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
