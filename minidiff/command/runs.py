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

from minidiff.captions import SPECIAL_TOKENS, TextEncoderConfig, Tokenizer
from minidiff.command.options import cascade_settings, run_length, train_config
from minidiff.corruption import to_model_range, to_uint8
from minidiff.datasets import CaptionedImages, load_dataset
from minidiff.evaluation.plotting import captioned_grid, save_figure, save_loss_curve
from minidiff.autoencoder import Autoencoder, autoencoder_preset, decode_latents, encode_images, load_autoencoder
from minidiff.generator import Generator, autoencoder_of, load
from minidiff.evaluation.evaluate import reference_set
from minidiff.evaluation.metrics import psnr
from minidiff.latents import (AutoencoderRun, AutoencoderTraining, autoencoder_identity, latent_dataset,
                              new_autoencoder_run, resume_autoencoder_run, train_autoencoder)
from minidiff.machinery.checkpoints import Checkpoint, CheckpointError
from minidiff.machinery.sharding import data_mesh, mesh_for_batch
from minidiff.model import ModelConfig, count_parameters, preset
from minidiff.superres import downsample, upsample
from minidiff.text_encoders.frozen import frozen_config, read_text_encoder_file
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


def model_config(args, tokenizer: Tokenizer, autoencoder: Autoencoder | None = None,
                 text_config: TextEncoderConfig | None = None) -> ModelConfig:
    """The model --preset, --backbone, --objective, --image-size, --attention-at, --text-encoder and --prediction
    ask for, reading `tokenizer`'s words; with the --autoencoder, a latent model (its denoiser sees the latents);
    with `text_config`, a pretrained encoder's (--text-encoder-file), frozen, and the denoiser reads its width."""
    backbone = args.backbone or args.recipe.get("backbone", "unet")
    objective = args.objective or args.recipe.get("objective", "diffusion")
    overrides = {}
    if args.attention_at and not (backbone != "unet" and args.attention_at == args.recipe.get("attention_at")):
        if backbone != "unet":  # the demo's recipe places a U-Net's attention: a DiT ignores it
            raise ValueError("--attention-at places the U-Net's attention; every block of a DiT attends")
        overrides["attention_resolutions"] = tuple(args.attention_at)
    size, latent = args.image_size, {}
    if autoencoder is not None:  # the denoiser works at the latent's side, on its channels
        size, _, overrides["channels"] = autoencoder.config.latent_shape
        file, sha256 = autoencoder_identity(args.autoencoder)
        latent = {"autoencoder_sha256": sha256, "autoencoder_file": file}
    if text_config is not None:
        overrides["caption_dim"] = text_config.dim
    config = preset(args.preset, tokenizer.vocab_size, image_size=size, max_length=tokenizer.max_length,
                    backbone=backbone, objective=objective, upscale_from=args.upscale_from or 0,
                    text_encoder=args.text_encoder or "transformer", **overrides)
    if text_config is not None:
        if args.text_encoder and args.text_encoder != text_config.kind:
            raise ValueError(f"--text-encoder-file holds a {text_config.kind} encoder, not a {args.text_encoder}: "
                             "drop --text-encoder")
        latent["text"] = frozen_config(text_config)
    return dataclasses.replace(config, **latent, **({"prediction": args.prediction} if args.prediction else {}))


def check_resumed_model(args, config: ModelConfig) -> None:
    """--backbone, --objective and --upscale-from, where given with --resume, must be the run's own; an
    --autoencoder must be the very file a latent run trained with (`generator.autoencoder_of` checks)."""
    if args.autoencoder and not config.latent:
        raise CheckpointError(f"{Path(args.out) / 'checkpoint.npz'} is a pixel model's run; it cannot resume with "
                              "--autoencoder: drop the option, or train a new run in another --out")
    for name in ("backbone", "objective", "upscale_from"):
        asked, saved = getattr(args, name), getattr(config, name)
        if asked is not None and asked != saved:
            raise CheckpointError(f"{Path(args.out) / 'checkpoint.npz'} is a run with --{name.replace('_', '-')} "
                                  f"{saved or 'none (a base model)'}; it cannot resume with {asked}: drop the option, "
                                  "or train a new run in another --out")
    if args.text_encoder_file or (args.text_encoder and args.text_encoder != config.text.kind):
        raise CheckpointError(f"{Path(args.out) / 'checkpoint.npz'} is a run with its own {config.text.kind} text "
                              "encoder; drop --text-encoder and --text-encoder-file, or train a new run in another "
                              "--out")


def new_or_resumed_state(args, dataset: CaptionedImages, config: TrainConfig,
                         autoencoder: Autoencoder | None = None) -> TrainState:
    """The run saved in --out (with --resume), or a new model for this dataset's captions."""
    if args.resume:
        state = resume_train_state(Path(args.out) / "checkpoint.npz", config)
        length = f"{state.trained_seconds:.0f} s of {60 * config.minutes:.0f}" if config.minutes else \
            f"step {state.step} of {config.steps}"
        print(f"resuming {Path(args.out) / 'checkpoint.npz'} at {length}")
        return state
    if args.text_encoder_file:  # its words are the corpus's it was pretrained on
        text_config, tokenizer, text_encoder = read_text_encoder_file(args.text_encoder_file)
        return new_train_state(model_config(args, tokenizer, autoencoder, text_config), tokenizer, config,
                               text_encoder)
    tokenizer = Tokenizer.from_captions(dataset.all_captions())
    return new_train_state(model_config(args, tokenizer, autoencoder), tokenizer, config)


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
    if config.latent:
        role = (f"a latent model: it diffuses {denoiser.image_size}x{denoiser.image_size}x{denoiser.channels} latents "
                f"of {config.autoencoder_file}, ")
    text = f"{'a frozen pretrained' if config.text.frozen else 'a'} {config.text.kind} text encoder"
    return (f"model: preset {preset_name}, {count_parameters(state.model) / 1e6:.2f} M parameters, {shape}; "
            f"{role}{config.objective}, predicts {config.prediction}; {text}")


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
    saved = saved_model_config(args) if args.resume else None
    if args.resume:
        check_resumed_model(args, saved)
    autoencoder = None
    if args.autoencoder or (saved is not None and saved.latent):
        autoencoder = autoencoder_of(saved, args.autoencoder) if saved is not None else load_autoencoder(args.autoencoder)
        args.autoencoder = args.autoencoder or saved.autoencoder_file
    if autoencoder is not None and not args.resume and args.image_size != autoencoder.config.image_size:
        raise ValueError(f"the autoencoder encodes {autoencoder.config.image_size} px images: train the latent "
                         f"model with --image-size {autoencoder.config.image_size}, or train an autoencoder at "
                         f"{args.image_size} px")
    if not args.resume:
        # The model's too (its words are not known yet), and a pretrained text encoder's file.
        text_config = read_text_encoder_file(args.text_encoder_file)[0] if args.text_encoder_file else None
        model_config(args, Tokenizer(SPECIAL_TOKENS), autoencoder, text_config)
    if autoencoder is not None:
        image_size = autoencoder.config.image_size
        pixels = load_training_data(args, image_size)
        dataset = latent_dataset(pixels, autoencoder, autoencoder_identity(args.autoencoder)[1], progress=not args.quiet)
    else:
        dataset = load_training_data(args, saved.denoiser.image_size if args.resume else args.image_size)
        pixels = dataset
    config = dataclasses.replace(config, horizontal_flip=dataset.flip_ok)
    state = new_or_resumed_state(args, dataset, config, autoencoder)
    print(describe_model(state, "(from checkpoint)" if args.resume else args.preset))
    out = Path(args.out)
    captions = captions_to_show(dataset, state.tokenizer, preferred_captions)

    def report(state):
        generator = Generator.from_training(state, autoencoder)
        path = out / f"samples_step{state.step:06d}.png"
        if generator.upscale_from:  # real images of a few classes, downsampled and upscaled
            shown = images_to_show(pixels)
            draw_upscaled(generator, pixels.images[shown], [pixels.captions[i][0] for i in shown], path, steps=25,
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
    # The first step of each session compiles and is not timed: a rate over a second or less would be noise.
    speed = (f"{state.step * config.batch_size / state.trained_seconds:.0f} images/s; "
             if state.trained_seconds >= 1.0 else "")
    print(f"trained {state.step} steps in {state.trained_seconds:.0f} s ({speed}compiling not counted)")
    return state


# --- The autoencoder of a latent model ---------------------------------------------------


def autoencoder_training_config(args, path: Path) -> AutoencoderTraining:
    """The run's settings from the options; its length from --steps or --minutes, else the resumed run's own."""
    default = {"steps": AutoencoderTraining.steps, "minutes": 0.0}
    if args.resume:
        (saved,) = Checkpoint(path).fields("autoencoder_training", kind="autoencoder training run")
        default = {"steps": saved["steps"], "minutes": saved["minutes"]}
    return AutoencoderTraining(batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed,
                               checkpoint_every=args.checkpoint_every, **({"minutes": 0.0} | run_length(args, default)))


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


def run_autoencoder_training(args) -> AutoencoderRun:
    """Train (or resume) the autoencoder in --out as `minidiff train-autoencoder` does; then show how well it
    rebuilds held-out images."""
    out = Path(args.out)
    path = out / "autoencoder.npz"
    config = autoencoder_training_config(args, path)  # every setting checked before anything slow
    shape_options = {"factor": args.factor, "latent_channels": args.latent_channels, "kl_weight": args.kl_weight}
    if args.resume:
        given = [name for name, value in shape_options.items() if value is not None]
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} is the resumed autoencoder's own: drop it with --resume")
        run = resume_autoencoder_run(path, config)
        print(f"resuming {path} at step {run.step}")
    else:
        factor = shape_options.pop("factor") or 4
        run = new_autoencoder_run(autoencoder_preset(factor, args.image_size, **{
            name: value for name, value in shape_options.items() if value is not None}), config)
    model_config = run.model.config
    dataset = load_training_data(args, model_config.image_size)
    print(f"autoencoder: {model_config.image_size} px images to {'x'.join(map(str, model_config.latent_shape))} "
          f"latents (f = {model_config.factor}), {count_parameters(run.model) / 1e6:.2f} M parameters, "
          f"KL weight {model_config.kl_weight:g}")
    out.mkdir(parents=True, exist_ok=True)
    train_autoencoder(run, dataset, path, progress=not args.quiet)
    save_loss_curve([(step, loss) for step, loss, *_ in run.losses], out / "loss.png")
    held_out = dataset if args.dataset == "folder" else reference_set(args.dataset, model_config.image_size,
                                                                       num_images=256, data_dir=args.data_dir)
    quality = show_reconstructions(run.model, held_out.images, [c[0] for c in held_out.captions],
                                   out / "reconstructions.png")
    print(f"trained {run.step} steps in {run.trained_seconds:.0f} s; latent scale {float(run.model.latent_scale[...]):.3f}; "
          f"reconstructions of {len(held_out)} {'training' if args.dataset == 'folder' else 'held-out'} images: "
          f"{quality:.1f} dB PSNR")
    print(f"wrote {path}, {out / 'reconstructions.png'} and {out / 'loss.png'}")
    return run
