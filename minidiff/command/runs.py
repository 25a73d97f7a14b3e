"""A training run as the command sets it up: its data, its model (new or resumed), the loop with its
sample grids, and the grids themselves. `minidiff train` and `minidiff demo` both run one
(`run_training`); the other commands draw grids with `draw_grid`.
"""

import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from minidiff.captions import SPECIAL_TOKENS, Tokenizer
from minidiff.command.options import cascade_settings, train_config
from minidiff.corruption import to_model_range
from minidiff.datasets import CaptionedImages, load_dataset
from minidiff.evaluation.plotting import captioned_grid, save_figure, save_loss_curve
from minidiff.generator import Generator, load
from minidiff.machinery.checkpoints import Checkpoint, CheckpointError
from minidiff.machinery.sharding import data_mesh, mesh_for_batch
from minidiff.model import ModelConfig, count_parameters, preset
from minidiff.superres import downsample, upsample
from minidiff.training import TrainConfig, TrainState, new_train_state, resume_train_state, train

# --- Pictures ----------------------------------------------------------------------


def note_unknown_words(tokenizer: Tokenizer, captions) -> None:
    for caption in captions:
        unknown = tokenizer.unknown_words(caption)
        if unknown:
            print(f"note: the model never saw the word(s) {', '.join(unknown)} in training; "
                  f"they are read as 'unknown' in {caption!r}", file=sys.stderr)


def draw_grid(generator: Generator, captions, path, *, per_caption: int = 6, title: str | None = None, **settings):
    """Sample `per_caption` images for each caption and save them as one captioned PNG grid."""
    note_unknown_words(generator.tokenizer, captions)
    images = generator.sample([c for c in captions for _ in range(per_caption)], **settings)
    used = Generator.settings(generator.objective, **settings)
    title = title or f"{used['sampler']}, {used['steps']} steps, guidance {used['guidance']:g}"
    save_figure(captioned_grid(images, captions, title=title), path)
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


# --- Training, piece by piece --------------------------------------------------------


def load_training_data(args, image_size: int) -> CaptionedImages:
    start = time.perf_counter()
    dataset = load_dataset(args.dataset, args.split, image_size=image_size, num_images=args.num_images,
                           seed=args.data_seed, data_dir=args.data_dir, use_cache=not args.no_cache,
                           download=args.download)
    print(f"dataset {dataset.name}: {len(dataset)} images of {image_size}x{image_size} "
          f"({time.perf_counter() - start:.1f} s)")
    return dataset


def model_config(args, tokenizer: Tokenizer) -> ModelConfig:
    """The model --preset, --backbone, --objective, --image-size, --attention-at and --prediction ask for,
    reading `tokenizer`'s words."""
    backbone = args.backbone or args.recipe.get("backbone", "unet")
    objective = args.objective or args.recipe.get("objective", "diffusion")
    overrides = {}
    if args.attention_at and not (backbone != "unet" and args.attention_at == args.recipe.get("attention_at")):
        if backbone != "unet":  # the demo's recipe places a U-Net's attention: a DiT ignores it
            raise ValueError("--attention-at places the U-Net's attention; every block of a DiT attends")
        overrides["attention_resolutions"] = tuple(args.attention_at)
    config = preset(args.preset, tokenizer.vocab_size, image_size=args.image_size, max_length=tokenizer.max_length,
                    backbone=backbone, objective=objective, upscale_from=args.upscale_from or 0, **overrides)
    return dataclasses.replace(config, prediction=args.prediction) if args.prediction else config


def check_resumed_model(args, config: ModelConfig) -> None:
    """--backbone, --objective and --upscale-from, where given with --resume, must be the run's own."""
    for name in ("backbone", "objective", "upscale_from"):
        asked, saved = getattr(args, name), getattr(config, name)
        if asked is not None and asked != saved:
            raise CheckpointError(f"{Path(args.out) / 'checkpoint.npz'} is a run with --{name.replace('_', '-')} "
                                  f"{saved or 'none (a base model)'}; it cannot resume with {asked}: drop the option, "
                                  "or train a new run in another --out")


def new_or_resumed_state(args, dataset: CaptionedImages, config: TrainConfig) -> TrainState:
    """The run saved in --out (with --resume), or a new model for this dataset's captions."""
    if args.resume:
        state = resume_train_state(Path(args.out) / "checkpoint.npz", config)
        length = f"{state.trained_seconds:.0f} s of {60 * config.minutes:.0f}" if config.minutes else \
            f"step {state.step} of {config.steps}"
        print(f"resuming {Path(args.out) / 'checkpoint.npz'} at {length}")
        return state
    tokenizer = Tokenizer.from_captions(dataset.all_captions())
    return new_train_state(model_config(args, tokenizer), tokenizer, config)


def describe_model(state: TrainState, preset_name: str) -> str:
    config = state.model.config
    denoiser = config.denoiser
    if config.backbone == "unet":
        attended = [f"{n}x{n}" for n in denoiser.level_sizes if n in denoiser.attention_resolutions] + ["the middle"]
        shape = f"U-Net, attention: {', '.join(attended)}"
    else:
        shape = (f"DiT, {denoiser.depth} blocks of width {denoiser.width} over {denoiser.grid}x{denoiser.grid} "
                 f"patches of {denoiser.patch_size}x{denoiser.patch_size} px")
    role = f"an upscaler from {config.upscale_from} to {denoiser.image_size} px, " if config.upscale_from else ""
    return (f"model: preset {preset_name}, {count_parameters(state.model) / 1e6:.2f} M parameters, {shape}; "
            f"{role}{config.objective}, predicts {config.prediction}")


def training_mesh(data_parallel: bool, batch_size: int):
    """Every device if asked, else as many of this host's as split the batch (a CPU counts one per core)."""
    mesh = data_mesh() if data_parallel else mesh_for_batch(batch_size)
    if mesh is not None:
        print(f"data-parallel over {mesh.size} devices ({jax.devices()[0].platform}): "
              f"{batch_size // mesh.size} images per device per step")
    return mesh


def saved_model_config(args) -> ModelConfig:
    """The model of the run --resume continues."""
    (config,) = Checkpoint(Path(args.out) / "checkpoint.npz").fields("model_config", kind="training run")
    return ModelConfig.from_dict(config)


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


def saved_length(args) -> dict:
    """The length (steps or minutes) of the run --resume continues."""
    (config,) = Checkpoint(Path(args.out) / "checkpoint.npz").fields("train_config", kind="training run")
    config = TrainConfig.from_dict(config)
    return {"minutes": config.minutes} if config.minutes else {"steps": config.steps, "minutes": 0.0}


def run_training(args, preferred_captions) -> TrainState:
    """Train as `minidiff train` does; returns the final TrainState. Its sample grids show the
    `preferred_captions` the model knows every word of (else a few of the dataset's own)."""
    # The settings are checked before anything slow happens.
    config = train_config(args, saved_length(args) if args.resume else args.default_length)
    if args.resume:
        check_resumed_model(args, saved_model_config(args))
    else:
        model_config(args, Tokenizer(SPECIAL_TOKENS))  # the model's too (its words are not known yet)
    dataset = load_training_data(args, saved_model_config(args).denoiser.image_size if args.resume else args.image_size)
    config = dataclasses.replace(config, horizontal_flip=dataset.flip_ok)
    state = new_or_resumed_state(args, dataset, config)
    print(describe_model(state, "(from checkpoint)" if args.resume else args.preset))
    out = Path(args.out)
    captions = captions_to_show(dataset, state.tokenizer, preferred_captions)

    def report(state):
        generator = Generator.from_training(state)
        path = out / f"samples_step{state.step:06d}.png"
        if generator.upscale_from:  # real images of a few classes, downsampled and upscaled
            shown = images_to_show(dataset)
            draw_upscaled(generator, dataset.images[shown], [dataset.captions[i][0] for i in shown], path, steps=25,
                          guidance=3.0)
        else:
            sampler = Generator.settings(generator.objective)["sampler"]
            draw_grid(generator, captions, path, per_caption=4, steps=25, guidance=3.0,
                      title=f"step {state.step}: {sampler}, 25 steps, guidance 3")
        save_loss_curve(state.losses, out / "loss.png")

    mesh = training_mesh(args.data_parallel or args.multi_host, config.batch_size)
    out.mkdir(parents=True, exist_ok=True)
    state = train(state, dataset, out_dir=out, on_report=report if args.sample_every else None,
                  progress=not args.quiet, mesh=mesh)
    print(f"trained {state.step} steps in {state.trained_seconds:.0f} s "
          f"({state.step * config.batch_size / max(state.trained_seconds, 1e-9):.0f} images/s; compiling not counted)")
    return state
