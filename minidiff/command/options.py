"""The command's options, each derived from the setting it sets, and checked where it is defined.

An option that sets a field of a config takes its name, type and default from
that field (`TrainConfig.batch_size` is `--batch-size`, default 64), an option
that sets a function's parameter takes its default from the function
(`Generator.sample`'s `steps`), and choices come from the modules' own tuples
(`sampling.SAMPLERS`). Nothing is copied, so nothing can drift. The configs
check their own values when they are built (`TrainConfig.__post_init__`,
`sampling.check_settings`): the command builds them before any long work, so a
bad value stops it at once with what is wrong. Whole numbers that no config
checks (how many images per caption) are checked by their argparse type,
`at_least`.
"""

import argparse
import dataclasses
import inspect

from minidiff.datasets import DATASETS, load_dataset
from minidiff.datasets.splits import SPLITS as REAL_SPLITS
from minidiff.datasets.toy import SPLITS as TOY_SPLITS
from minidiff.flows import TIME_SAMPLINGS
from minidiff.generator import ALL_SAMPLERS, SAMPLERS_OF, SAMPLING_SETTINGS, Generator
from minidiff.model import BACKBONES, OBJECTIVES, PRESETS, UNET_PRESETS, preset
from minidiff.sampling import X0_CLIPPINGS
from minidiff.text_encoders import TEXT_ENCODERS
from minidiff.training import PRECISIONS, TrainConfig

# The TrainConfig fields the command sets; the others keep their defaults. The run's length (steps or
# minutes) is set apart: see `run_length`.
TRAIN_OPTIONS = ("batch_size", "learning_rate", "seed", "sample_every", "checkpoint_every", "precision",
                 "time_sampling")


def at_least(smallest: int):
    """An argparse type: a whole number no smaller than `smallest`."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < smallest:
            raise argparse.ArgumentTypeError(f"must be at least {smallest}, got {value}")
        return value

    return whole_number


def positive_number(text: str) -> float:
    """An argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def default_of(function, name: str):
    """The default value of parameter `name` of `function`."""
    return inspect.signature(function).parameters[name].default


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_option(parser, config, name: str, help: str, **overrides):
    """An option for field `name` of the dataclass `config`: its flag, type and default from the field."""
    field = next(f for f in dataclasses.fields(config) if f.name == name)
    settings = {"type": type(field.default), "default": field.default} | overrides
    parser.add_argument(_flag(name), help=f"{help} (default: %(default)s)", **settings)


def parameter_option(parser, function, name: str, help: str, flag: str | None = None, **overrides):
    """An option for parameter `name` of `function`: its flag, type and default from the parameter."""
    default = default_of(function, name)
    settings = {"type": type(default), "default": default} | overrides
    shown = "" if settings["default"] is None else " (default: %(default)s)"  # a None default: `help` says it
    parser.add_argument(flag or _flag(name), help=help + shown, **settings)


def run_length(args, default: dict) -> dict:
    """{"steps": N} or {"minutes": M}: what --steps or --minutes asks for, else `default`."""
    if args.minutes is not None:
        return {"minutes": args.minutes}
    if args.steps is not None:
        return {"steps": args.steps, "minutes": 0.0}
    return default


def train_config(args, default_length: dict) -> TrainConfig:
    """The TrainConfig the options ask for (a ValueError that says what is wrong, if it cannot train);
    without --steps or --minutes, the run lasts `default_length` (see `run_length`)."""
    return TrainConfig(**{name: getattr(args, name) for name in TRAIN_OPTIONS}, **run_length(args, default_length))


def add_data_options(p):
    """--dataset, --data-dir, --split and the other options that say which images a run trains on."""
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default="toy", choices=DATASETS,
                      help="training data (default: %(default)s, the embedded flowers and birds; flowers = Oxford-102, "
                      "birds = CUB-200-2011, folder = your images with captions)")
    data.add_argument("--data-dir", help="where flowers or birds are on disk (or the folder for 'folder'); "
                      "default: $MINIDIFF_DATA_DIR, then ./data")
    parameter_option(data, load_dataset, "split", f"which images to train on: one of {', '.join(REAL_SPLITS)} "
                     f"for flowers and birds; one of {', '.join(TOY_SPLITS)} for the embedded set")
    data.add_argument("--download", action="store_true",
                      help="let tensorflow-datasets download flowers or birds if no local copy is found")
    data.add_argument("--no-cache", action="store_true",
                      help="decode the images again instead of using the cache "
                      "($MINIDIFF_CACHE_DIR or ~/.cache/minidiff)")
    parameter_option(data, load_dataset, "num_images", "images to generate for the embedded dataset",
                     type=at_least(1))
    parameter_option(data, load_dataset, "seed", "seed of the embedded dataset", flag="--data-seed", dest="data_seed")


def add_training_options(p, length: dict, out: str, sample_every: int, recipe: dict | None = None):
    """The options of `train` and `demo`, which differ in their defaults for these: `length` is
    {"steps": N} or {"minutes": M}; `recipe` may set the defaults of preset, backbone, objective,
    attention_at (for a U-Net), batch_size and learning_rate."""
    recipe = recipe or {}
    given = lambda name: {"default": recipe[name]} if name in recipe else {}  # noqa: E731
    add_data_options(p)

    model = p.add_argument_group("model")
    parameter_option(model, preset, "image_size", "image side in pixels", type=at_least(1))
    model.add_argument("--preset", default=recipe.get("preset", "small"), choices=PRESETS,
                       help="model size: tiny (tests, the demo), small (CPU), base (GPU) (default: %(default)s)")
    model.add_argument("--backbone", choices=tuple(BACKBONES), help="the denoiser: unet, or dit (a transformer over "
                       "patches, 4x4 px in the tiny and small presets, 2x2 in base; about the U-Net's FLOPs) "
                       f"(default: {recipe.get('backbone', 'unet')}; with --resume, the run's own)")
    model.add_argument("--objective", choices=tuple(OBJECTIVES), help="diffusion (the network predicts eps, x0 or v "
                       "of the noised image), or flow (the straight path from image to noise; it predicts the "
                       f"velocity) (default: {recipe.get('objective', 'diffusion')}; with --resume, the run's own)")
    attention_default = (" ".join(map(str, recipe["attention_at"])) if "attention_at" in recipe else
                         "the preset's: " + "; ".join(f"{name} {' '.join(map(str, unet.attention_resolutions))}"
                                                      for name, unet in UNET_PRESETS.items()))
    model.add_argument("--attention-at", type=at_least(1), nargs="+", metavar="SIZE", **given("attention_at"),
                       help="feature-map sizes (the image side over the patch size, halved at each level) whose blocks "
                       f"get self- and cross-attention, e.g. 8 4 (default: {attention_default})")
    model.add_argument("--upscale-from", type=at_least(1), metavar="SIZE",
                       help="train an upscaler, a cascade's super-resolution stage: from SIZE px images (each training "
                       "image downsampled) to --image-size, conditioned on the caption too (default: a base model, "
                       "which draws from the caption alone; with --resume, the run's own)")
    model.add_argument("--autoencoder", metavar="FILE", help="train a latent model: diffuse the latents of this "
                       "autoencoder (minidiff train-autoencoder's autoencoder.npz), at --image-size its images' size; "
                       "the dataset is encoded once and cached (default: diffuse pixels; with --resume, the run's own)")
    model.add_argument("--text-encoder", choices=tuple(TEXT_ENCODERS), help="what reads the captions, trained with "
                       "the denoiser: transformer, lstm (bidirectional), or bag_of_words (blind to word order) "
                       "(default: transformer; with --resume, the run's own)")
    model.add_argument("--text-encoder-file", metavar="FILE", help="a text encoder pretrained on text alone "
                       "(minidiff pretrain-text's file): the model reads captions with it, frozen, and with its words "
                       "(default: a new encoder trained with the denoiser)")
    choices = tuple(dict.fromkeys(p for predictions in OBJECTIVES.values() for p in predictions))
    model.add_argument("--prediction", choices=choices, help="what the network predicts (default: "
                       + ", ".join(f"{predictions[0]} for {name}" for name, predictions in OBJECTIVES.items()) + ")")

    training = p.add_argument_group("training")
    default = f"{length['minutes']:g} minutes" if "minutes" in length else f"{length['steps']} steps"
    either = training.add_mutually_exclusive_group()
    either.add_argument("--steps", type=at_least(1), help=f"train for this many steps (default: {default})")
    either.add_argument("--minutes", type=positive_number,
                        help="train for this many minutes, however many steps they buy; the learning rate's warm-up "
                        "and decay follow the time spent, and compiling and sample grids are not counted "
                        f"(default: {default})")
    p.set_defaults(default_length=length, recipe=recipe)
    field_option(training, TrainConfig, "batch_size", "images per step", **given("batch_size"))
    field_option(training, TrainConfig, "learning_rate", "peak AdamW learning rate", **given("learning_rate"))
    field_option(training, TrainConfig, "seed", "seed of initialisation, batches and noise")
    field_option(training, TrainConfig, "precision", "bfloat16: mixed precision (bf16 compute, float32 master "
                 "weights), for GPUs and TPUs", choices=PRECISIONS)
    field_option(training, TrainConfig, "time_sampling", "where a flow model's training times t are drawn: "
                 "logit_normal (SD3's, most in the middle) or uniform", choices=TIME_SAMPLINGS)
    field_option(training, TrainConfig, "sample_every", "steps between sample grids, 0 = none during training",
                 default=sample_every)
    field_option(training, TrainConfig, "checkpoint_every", "steps between checkpoints, 0 = only at the end")
    training.add_argument("--out", default=out,
                          help="output folder for checkpoint, loss curve and samples (default: %(default)s)")
    training.add_argument("--resume", action="store_true", help="continue the run saved in --out: to --steps, for "
                          "what is left of --minutes, or, with neither, to the end of the run as it was set")
    training.add_argument("--data-parallel", action="store_true", help="split each batch over every device (GPUs, "
                          "TPU cores, CPU cores) and stop if it does not split evenly; without it, each batch is split "
                          "over as many of this host's devices as it evenly can")
    training.add_argument("--multi-host", action="store_true", help="join a multi-host run first "
                          "(jax.distributed.initialize); implies --data-parallel over every host's devices")
    training.add_argument("--quiet", action="store_true", help="no progress bar")


# The SAMPLING_SETTINGS of `Generator.sample`, as options: (help, how argparse reads it).
SAMPLING_OPTIONS = {
    "sampler": ("update rule: " + "; ".join(f"{', '.join(samplers)} for a {objective} model"
                                            for objective, samplers in SAMPLERS_OF.items())
                + " (default: the first)", dict(type=str, choices=ALL_SAMPLERS)),
    "steps": ("denoising steps (Heun makes 2 network calls per step)", dict(type=at_least(1))),
    "guidance": ("classifier-free guidance: 1 = none, 0 = ignore the caption", {}),
    "eta": ("DDIM noise: 0 = deterministic, 1 = like DDPM", {}),
    "x0_clipping": ("what is done to each x0 prediction: static = clip to the image range [-1, 1], dynamic = "
                    "scale each image that overshoots back into it (Imagen), none = nothing (default: static for a "
                    "pixel model, none for a latent one)",
                    dict(type=str, choices=X0_CLIPPINGS)),
    "seed": ("noise seed", {}),
}


def add_sampling_options(p, names=SAMPLING_SETTINGS, **defaults):
    """--sampler, --steps, --guidance, ... for the settings `names` of `Generator.sample` (defaults from it,
    unless given here)."""
    for name in names:
        help, reading = SAMPLING_OPTIONS[name]
        overrides = reading | ({"default": defaults[name]} if name in defaults else {})
        parameter_option(p, Generator.sample, name, help, **overrides)
    p.set_defaults(sampling_options=tuple(names))  # which options are sampling's: --steps may be training's


def sampling_settings(args) -> dict:
    """The `Generator.sample` settings the command's sampling options asked for."""
    return {name: getattr(args, name) for name in args.sampling_options}


def add_autoencoder_option(p):
    """--autoencoder, for the commands that load a model to draw with."""
    p.add_argument("--autoencoder", metavar="FILE", help="a latent model's autoencoder, if it is no longer where it "
                   "was when the model trained (it must be the same file)")


# The settings each upscaler of a cascade draws with, as options of one value (every upscaler) or one per
# --upscaler: (the setting, help, how argparse reads a value).
CASCADE_OPTIONS = (
    ("sampler", "each upscaler's sampler (default: its objective's first)", dict(choices=ALL_SAMPLERS)),
    ("steps", f"each upscaler's denoising steps (default: {default_of(Generator.sample, 'steps')})",
     dict(type=at_least(1))),
    ("guidance", f"each upscaler's guidance (default: {default_of(Generator.sample, 'guidance'):g})",
     dict(type=float)),
    ("augmentation_level", "the noise level, 0 to 1, at which each upscaler sees the image it upscales (noise-"
     f"conditioning augmentation; default: {default_of(Generator.then, 'augmentation_level'):g})", dict(type=float)),
)


def _cascade_flag(name: str) -> str:
    return "--" + ("" if name == "augmentation_level" else "upscaler-") + name.replace("_", "-")


def add_cascade_options(p):
    """--upscaler (repeated: a cascade) and the settings its upscalers draw with."""
    cascade = p.add_argument_group("cascade")
    cascade.add_argument("--upscaler", action="append", default=[], metavar="CHECKPOINT",
                         help="follow the model with this upscaler (trained with --upscale-from); repeat for "
                         "several, smallest first, e.g. --upscaler sr64.npz --upscaler sr128.npz")
    for name, help, reading in CASCADE_OPTIONS:
        cascade.add_argument(_cascade_flag(name), dest=f"upscaler_{name}", nargs="+", metavar="VALUE",
                             help=help + "; one value for every upscaler, or one per --upscaler", **reading)


def cascade_settings(args) -> list[dict]:
    """The settings of each --upscaler, from the cascade's options (`Generator.then`'s keywords)."""
    count = len(args.upscaler)
    per_upscaler = [{} for _ in range(count)]
    for name, _, _ in CASCADE_OPTIONS:
        values = getattr(args, f"upscaler_{name}")
        if values is None:
            continue
        if not count:
            raise ValueError(f"{_cascade_flag(name)} sets upscalers, and no --upscaler was given")
        if len(values) not in (1, count):
            raise ValueError(f"{_cascade_flag(name)} has {len(values)} values for {count} upscaler(s): give one, or "
                             "one per --upscaler")
        for settings, value in zip(per_upscaler, values * count if len(values) == 1 else values):
            settings[name] = value
    if count and getattr(args, "x0_clipping", None):
        for settings in per_upscaler:
            settings["x0_clipping"] = args.x0_clipping  # the cascade clips as its base model does
    return per_upscaler
