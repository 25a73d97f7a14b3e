"""A training run as the command sets it up: its recipe, its data, its model (new or resumed), the loop
with its sample grids, and the grids themselves. `minidiff train` and `minidiff demo` both run one
(`run_training`), `minidiff train-autoencoder` an autoencoder's (`run_autoencoder_training`); the other
commands draw grids with `draw_grid`.
"""

import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from minidiff.autoencoder import Autoencoder, decode_latents, encode_images
from minidiff.captions import Tokenizer
from minidiff.command.options import cascade_settings, overrides
from minidiff.corruption import to_model_range, to_uint8
from minidiff.datasets import TOY, CaptionedImages
from minidiff.evaluation.evaluate import reference_set
from minidiff.evaluation.metrics import psnr
from minidiff.evaluation.plotting import captioned_grid, save_figure, save_loss_curve
from minidiff.from_recipe import Trained, check, prepare
from minidiff.generator import Generator, load
from minidiff.latents import KIND as AUTOENCODER_RUN
from minidiff.latents import resume_autoencoder_run, start_autoencoder_run, train_autoencoder
from minidiff.loop import Run
from minidiff.machinery.checkpoints import Checkpoint, CheckpointError
from minidiff.machinery.sharding import data_mesh, mesh_for_batch
from minidiff.model import count_parameters
from minidiff.recipe import AutoencoderRecipe, Recipe, load_recipe
from minidiff.superres import downsample, upsample
from minidiff.training import KIND, resume_run, saved_run, start_run, train

# --- Pictures ----------------------------------------------------------------------


def note_unknown_words(tokenizer: Tokenizer, captions) -> None:
    for caption in captions:
        unknown = tokenizer.unknown_words(caption)
        if unknown:
            print(f"note: the model never saw the word(s) {', '.join(unknown)} in training; "
                  f"they are read as 'unknown' in {caption!r}", file=sys.stderr)


def draw_grid(generator: Generator, captions, path, *, per_caption: int = 6, title: str | None = None,
              real_images=None, **settings):
    """Sample `per_caption` images for each caption and save them as one captioned PNG grid; with
    `real_images` (uint8, one per caption), each row ends with the real image its caption describes."""
    note_unknown_words(generator.tokenizer, captions)
    images = generator.sample([c for c in captions for _ in range(per_caption)], **settings)
    used = generator.sampler_settings(**{k: v for k, v in settings.items() if k != "seed"})
    title = title or f"{used.sampler}, {used.sampling_steps} steps, guidance {used.guidance:g}"
    shown = to_uint8(images)
    if real_images is not None:
        title += "; last column: the real image"
        rows = shown.reshape(len(captions), per_caption, *shown.shape[1:])
        shown = np.concatenate([rows, np.asarray(real_images)[:, None]], axis=1).reshape(-1, *shown.shape[1:])
    save_figure(captioned_grid(shown, captions, title=title), path)
    return images


def with_upscalers(generator: Generator, args) -> Generator:
    """The generator followed by each --upscaler, with its settings (`options.cascade_settings`), all
    checked before anything is drawn."""
    if generator.upscale_from:
        raise ValueError(f"{args.checkpoint} is an upscaler (from {generator.upscale_from} px): give a base model's "
                         "checkpoint, and this one as --upscaler")
    for path, settings in zip(args.upscaler, cascade_settings(args)):
        generator = generator.then(load(path), **settings)
    return generator


def draw_upscaled(generator: Generator, images_uint8, captions, path, **settings):
    """An upscaler's grid: per caption, its real image downsampled, that image upscaled by bicubic
    interpolation and by the upscaler, and the real image."""
    size = generator.image_shape[0]
    real = to_model_range(jnp.asarray(images_uint8))
    low_res = downsample(real, generator.upscale_from)
    upscaled = generator.sample(captions, low_res=low_res, **settings)
    small = jax.image.resize(low_res, upscaled.shape, "nearest")  # each small pixel shown as a block
    rows = np.stack([small, upsample(low_res, size), upscaled, real], axis=1).reshape(-1, *upscaled.shape[1:])
    title = f"{generator.upscale_from} px, bicubic to {size} px, the upscaler, the real image"
    save_figure(captioned_grid(rows, captions, title=title), path)
    return upscaled


def images_to_show(dataset: CaptionedImages, count: int = 4) -> list[int]:
    """The indices of the first image of each of a few classes."""
    shown, classes = [], set()
    for index, label in enumerate(dataset.labels.get("class", range(len(dataset)))):
        if int(label) not in classes and len(shown) < count:
            classes.add(int(label))
            shown.append(index)
    return shown


def captions_to_show(dataset: CaptionedImages, tokenizer: Tokenizer, preferred, count: int = 4) -> list[str]:
    """The preferred captions the model knows every word of; else the first captions of a few classes."""
    known = [c for c in preferred if not tokenizer.unknown_words(c)]
    return known or [dataset.captions[i][0] for i in images_to_show(dataset, count)]


# The datasets with an eval split: images set aside, with their captions (`minidiff.datasets.splits`).
WITH_EVAL_SPLIT = ("flowers", "birds", "coco")


def held_out_to_show(recipe: Recipe, data_dir=None, count: int = 4) -> tuple[list[str], np.ndarray]:
    """For flowers, birds and COCO: captions of a few held-out images (the eval split, one per class), and those
    images, for a training run's grids to draw beside them."""
    held_out = reference_set(recipe.data.dataset, recipe.data.image_size, data_dir=data_dir)
    shown = images_to_show(held_out, count)
    return [held_out.captions[i][0] for i in shown], held_out.images[shown]


# --- A run of a recipe ---------------------------------------------------------------------


def check_data_access(args, recipe) -> None:
    """--data-dir and --download find flowers, birds and folders; the embedded set needs neither."""
    if recipe.data.dataset in TOY:
        given = [flag for flag, value in (("--data-dir", args.data_dir), ("--download", args.download)) if value]
        if given:
            raise ValueError(f"{given[0]} finds flowers, birds or a folder; this recipe trains on the embedded set "
                             f"({recipe.data.dataset}), which needs no data on disk")


def resumed_recipe(args, kind: str, file: str) -> tuple[Path, dict]:
    """For --resume: the run's `file` in --out, and its length from --steps or --minutes; a recipe or any
    other --set is refused: a run continues with its own."""
    args.out = args.out or str(Path("runs") / args.default_recipe)
    path = Path(args.out) / file
    if args.recipe is not None:
        raise ValueError(f"--resume continues the run in {args.out} with its own recipe: drop --recipe {args.recipe}")
    length = {"train.steps", "train.minutes"}
    changed = overrides(args)
    other = sorted(set(changed) - length)
    if other:
        raise ValueError(f"--resume continues the run in {args.out} as it was set; only its length (--steps, "
                         f"--minutes) may change, not {other[0]}")
    if not path.is_file():
        raise CheckpointError(f"no run to resume in {args.out}: train one there first (without --resume)")
    (saved,) = Checkpoint(path).fields("train_config", kind=kind)
    length_now = {"steps": saved["steps"], "minutes": saved["minutes"]}
    length_now |= {key.split(".")[1]: value for key, value in changed.items()}
    return path, length_now


def training_mesh(data_parallel: bool, batch_size: int):
    """Every device if asked, else as many of this host's as split the batch (a CPU counts one per core)."""
    mesh = data_mesh() if data_parallel else mesh_for_batch(batch_size)
    if mesh is not None:
        print(f"data-parallel over {mesh.size} devices ({jax.devices()[0].platform}): "
              f"{batch_size // mesh.size} images per device per step")
    return mesh


def speed(run: Run) -> str:
    """How many images a second the run trained at; the first step of each session compiles and is not timed,
    so a run of a second or less gives no rate."""
    if run.trained_seconds < 1.0:
        return ""
    return f"{run.step * run.config.batch_size / run.trained_seconds:.0f} images/s; "


def run_training(args, preferred_captions, grids: bool = True) -> Trained:
    """Train as `minidiff train` does (a new run of --recipe, or --resume the one in --out). Its sample grids
    (every report_every steps and at the end; none without `grids`) show the `preferred_captions` the model
    knows every word of (else a few of the dataset's own)."""
    if args.resume:
        path, length = resumed_recipe(args, KIND, "checkpoint.npz")
        _, _, saved = saved_run(path)
        if saved is None:
            raise CheckpointError(f"{path} records no recipe (it was trained from Python): resume it from Python, "
                                  "with minidiff.training.resume_run")
        recipe = Recipe.from_dict(saved)
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, **length))
    else:
        recipe = load_recipe(args.recipe or args.default_recipe, overrides(args))
        check(recipe)  # the settings and the files it names, before anything slow
    check_data_access(args, recipe)
    out = Path(args.out or Path("runs") / recipe.name)
    args.out = str(out)
    prepared = prepare(recipe, args.data_dir, use_cache=not args.no_cache, download=args.download,
                       progress=not args.quiet)
    print(f"dataset {prepared.images.name}: {len(prepared.images)} images of {recipe.data.image_size} px")
    checkpoint = out / "checkpoint.npz"
    if args.resume:
        saved_config, saved_tokenizer, _ = saved_run(checkpoint)
        if saved_tokenizer != prepared.tokenizer:
            raise CheckpointError(f"the data {recipe.data.dataset} has other words than the run in {out} was trained "
                                  "on: resume it on the same data")
        if saved_config != prepared.model_config:  # the same recipe, but a file it names has changed
            raise CheckpointError(f"the run in {out} was trained with other files than its recipe now names (its "
                                  "autoencoder or text encoder has changed or moved): resume it with those it had")
        run = resume_run(checkpoint, recipe.train)
        print(f"resuming {checkpoint} at step {run.step} of {recipe.train.length}")
    else:
        run = start_run(prepared.model_config, recipe.train, prepared.text_encoder)
    print(f"recipe {recipe.name}: {count_parameters(run.model) / 1e6:.2f} M parameters, "
          f"{prepared.model_config.describe()}; {recipe.train.length}")
    trained = Trained(run, prepared)
    # Real data draws its own held-out captions beside their images; the embedded set, the captions asked for.
    if recipe.data.dataset in WITH_EVAL_SPLIT:
        captions, real = held_out_to_show(recipe, args.data_dir)
    else:
        captions, real = captions_to_show(prepared.images, prepared.tokenizer, preferred_captions), None

    def report(run):
        generator = trained.generator
        path = out / f"samples_step{run.step:06d}.png"
        if generator.upscale_from:  # real images of a few classes, downsampled and upscaled
            images = prepared.images
            shown = images_to_show(images)
            draw_upscaled(generator, images.images[shown], [images.captions[i][0] for i in shown], path)
        else:
            settings = generator.sampler_settings()
            draw_grid(generator, captions, path, per_caption=4, real_images=real,
                      title=f"step {run.step}: {settings.sampler}, {settings.sampling_steps} steps, "
                      f"guidance {settings.guidance:g}")
        save_loss_curve(run.losses, out / "loss.png")

    mesh = training_mesh(args.data_parallel or args.multi_host, recipe.train.batch_size)
    out.mkdir(parents=True, exist_ok=True)
    train(run, prepared.dataset, prepared.tokenizer, checkpoint=checkpoint, mesh=mesh, progress=not args.quiet,
          on_report=report if grids else None, recipe=recipe.to_dict())
    print(f"trained {run.step} steps in {run.trained_seconds:.0f} s ({speed(run)}compiling not counted)")
    return trained


# --- The autoencoder of a latent model ---------------------------------------------------


def show_reconstructions(autoencoder: Autoencoder, images_uint8, captions, path) -> float:
    """A grid of real images beside their reconstructions; returns the reconstructions' PSNR (dB)."""
    real = to_model_range(jnp.asarray(images_uint8))
    rebuilt = decode_latents(autoencoder, encode_images(autoencoder, images_uint8))
    shown = min(8, len(real))
    rows = np.stack([real[:shown], rebuilt[:shown]], axis=1).reshape(-1, *real.shape[1:])
    quality = psnr(to_uint8(rebuilt), images_uint8)
    save_figure(captioned_grid(rows, list(captions[:shown]), title=f"real, reconstructed ({quality:.1f} dB PSNR over "
                               f"{len(real)} images)"), path)
    return quality


def run_autoencoder_training(args) -> Run:
    """Train (or resume) an autoencoder as `minidiff train-autoencoder` does; then show how well it rebuilds
    held-out images."""
    if args.resume:
        path, length = resumed_recipe(args, AUTOENCODER_RUN, "autoencoder.npz")
        (saved,) = Checkpoint(path).fields("recipe", kind=AUTOENCODER_RUN)
        recipe = AutoencoderRecipe.from_dict(saved)
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, **length))
    else:
        recipe = load_recipe(args.recipe or args.default_recipe, overrides(args), trains="autoencoder")
        recipe.model_config()  # checked before anything slow
    check_data_access(args, recipe)
    out = Path(args.out or Path("runs") / recipe.name)
    args.out = str(out)
    path = out / "autoencoder.npz"
    if args.resume:
        run = resume_autoencoder_run(path, recipe.train)
        print(f"resuming {path} at step {run.step}")
    else:
        run = start_autoencoder_run(recipe.model_config(), recipe.train)
    model_config = run.model.config
    dataset = recipe.data.load(args.data_dir, use_cache=not args.no_cache, download=args.download)
    print(f"autoencoder: {model_config.image_size} px images to {'x'.join(map(str, model_config.latent_shape))} "
          f"latents (f = {model_config.factor}), {count_parameters(run.model) / 1e6:.2f} M parameters, "
          f"KL weight {model_config.kl_weight:g}; {recipe.train.length}")
    out.mkdir(parents=True, exist_ok=True)
    train_autoencoder(run, dataset, checkpoint=path, progress=not args.quiet, recipe=recipe.to_dict())
    save_loss_curve(run.losses, out / "loss.png")
    folder = recipe.data.dataset == "folder"
    held_out = dataset if folder else reference_set(recipe.data.dataset, model_config.image_size, num_images=256,
                                                    data_dir=args.data_dir)
    quality = show_reconstructions(run.model, held_out.images, [c[0] for c in held_out.captions],
                                   out / "reconstructions.png")
    print(f"trained {run.step} steps in {run.trained_seconds:.0f} s; latent scale "
          f"{float(run.model.latent_scale[...]):.3f}; reconstructions of {len(held_out)} "
          f"{'training' if folder else 'held-out'} images: {quality:.1f} dB PSNR")
    print(f"wrote {path}, {out / 'reconstructions.png'} and {out / 'loss.png'}")
    return run

