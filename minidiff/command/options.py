"""The command's options, each derived from the setting it sets, and checked where it is defined.

A run is set by a recipe (`minidiff.recipe`) and changed field by field with
`--set TABLE.FIELD=VALUE`; the few options beside it say where a run's files
go and how it is shown, not what it trains. An option that sets a function's
parameter takes its default from the function, and choices come from the
modules' own tuples (`sampling.SAMPLERS`). Nothing is copied, so nothing can
drift. The configs check their own values when they are built
(`TrainConfig.__post_init__`, `SamplerSettings.__post_init__`): the command
builds them before any long work, so a bad value stops it at once with what is
wrong. An option that does not apply to a run is refused, with one line.
Whole numbers that no config checks (how many images per caption) are checked
by their argparse type, `at_least`.

Each flag means one thing in every command: `--out` is the folder a command
writes into, `--steps` a number of training steps, `--sampling-steps` the
noise levels a sampler visits, `--autoencoder` a latent model's autoencoder
file where it is no longer where it was.
"""

import argparse
import inspect

from minidiff.generator import Generator
from minidiff.recipe import parse_value, recipe_names
from minidiff.sampling import SAMPLERS, SPACINGS, X0_CLIPPINGS, SamplerSettings


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


def parameter_option(parser, function, name: str, help: str, flag: str | None = None, **overrides):
    """An option for parameter `name` of `function`: its flag, type and default from the parameter."""
    default = default_of(function, name)
    settings = {"type": type(default), "default": default} | overrides
    shown = "" if settings["default"] is None else " (default: %(default)s)"  # a None default: `help` says it
    parser.add_argument(flag or "--" + name.replace("_", "-"), help=help + shown, **settings)


def setting(text: str) -> tuple[str, object]:
    """An argparse type: TABLE.FIELD=VALUE, the value read as TOML (`recipe.parse_value`)."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected TABLE.FIELD=VALUE (e.g. train.batch_size=16), got {text!r}")
    return key.strip(), parse_value(value.strip())


def add_recipe_options(p, default: str, fixed: bool = False):
    """--recipe (unless the command's recipe is `fixed`) and --set, which together say what a run trains;
    `default`: the recipe without --recipe."""
    if not fixed:
        p.add_argument("--recipe", metavar="NAME", help="the run's recipe: one of " + ", ".join(recipe_names())
                       + f" (minidiff recipes describes them), or a .toml file of your own (default: {default})")
    p.set_defaults(recipe=None, default_recipe=default)
    p.add_argument("--set", dest="settings", type=setting, nargs="+", action="extend", default=[],
                   metavar="TABLE.FIELD=VALUE", help="change a field of the recipe, e.g. --set train.batch_size=16 "
                   "model.backbone=unet process.kind=flow model.denoiser.attention_resolutions=[8,4]; "
                   "a field that does not exist or does not apply is an error")


def add_length_options(p):
    """--steps or --minutes: the run's length (train.steps or train.minutes)."""
    either = p.add_mutually_exclusive_group()
    either.add_argument("--steps", type=at_least(1), help="train for this many steps (default: the recipe's)")
    either.add_argument("--minutes", type=positive_number, help="train for this many minutes, however many steps "
                        "they buy; the learning rate's warm-up and decay follow the time spent, and compiling and "
                        "sample grids are not counted (default: the recipe's)")


def overrides(args) -> dict:
    """The recipe fields the command line changes: --set's, and the run's length from --steps or --minutes."""
    changed = dict(args.settings)
    flag = "--minutes" if getattr(args, "minutes", None) is not None else "--steps" if getattr(args, "steps", None) \
        is not None else None
    both = sorted({"train.steps", "train.minutes"} & set(changed))
    if flag and both:
        raise ValueError(f"{flag} and --set {both[0]} both set the run's length: give one")
    if "train.steps" in changed and "train.minutes" not in changed:
        changed["train.minutes"] = 0.0  # a length in steps is no budget in minutes
    if getattr(args, "minutes", None) is not None:
        changed["train.minutes"] = args.minutes
    if getattr(args, "steps", None) is not None:
        changed |= {"train.steps": args.steps, "train.minutes": 0.0}
    return changed


def add_data_access_options(p):
    """Where a run finds flowers and birds, and whether it may download or cache them."""
    data = p.add_argument_group("data on this machine")
    data.add_argument("--data-dir", help="where flowers or birds are on disk (or the folder of the folder dataset); "
                      "default: $MINIDIFF_DATA_DIR, then ./data")
    data.add_argument("--download", action="store_true",
                      help="let tensorflow-datasets download flowers or birds if no local copy is found")
    data.add_argument("--no-cache", action="store_true", help="decode the images again instead of using the cache "
                      "($MINIDIFF_CACHE_DIR or ~/.cache/minidiff)")


def add_run_options(p, out: str | None, devices: bool = True):
    """--out, --resume, --quiet, and (with `devices`) the devices a run trains on. `out`: the default folder
    (None: runs/RECIPE)."""
    run = p.add_argument_group("the run")
    run.add_argument("--out", default=out, help="the run's folder: its checkpoint, loss curve and sample grids "
                     f"(default: {out or 'runs/ and the recipe name'})")
    run.add_argument("--resume", action="store_true", help="continue the run saved in --out, with its own recipe: "
                     "to --steps, for what is left of --minutes, or, with neither, to its end")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    if not devices:
        return
    run.add_argument("--data-parallel", action="store_true", help="split each batch over every device (GPUs, TPU "
                     "cores, CPU cores) and stop if it does not split evenly; without it, each batch is split over as "
                     "many of this host's devices as it evenly can")
    run.add_argument("--multi-host", action="store_true", help="join a multi-host run first "
                     "(jax.distributed.initialize); implies --data-parallel over every host's devices")


# The fields of `SamplerSettings`, as options: (help, how argparse reads it).
SAMPLING_OPTIONS = {
    "sampler": ("the update rule (ddpm is ddim with eta 1)", dict(type=str, choices=SAMPLERS)),
    "sampling_steps": ("noise levels a sampler visits (Heun calls the network twice at all but the last)",
                       dict(type=at_least(1))),
    "guidance": ("classifier-free guidance: 1 = none, 0 = ignore the caption", dict(type=float)),
    "eta": ("DDIM's noise: 0 = deterministic, 1 = like DDPM", dict(type=float)),
    "x0_clipping": ("what is done to each x0 prediction: static = clip to the image range [-1, 1], dynamic = "
                    "scale each image that overshoots back into it (Imagen), none = nothing",
                    dict(type=str, choices=X0_CLIPPINGS)),
    "spacing": ("the noise levels visited: uniform in time, or karras (crowded near the clean end)",
                dict(type=str, choices=SPACINGS)),
}
SAMPLING_SETTINGS = tuple(SAMPLING_OPTIONS)


def add_sampling_options(p, names=SAMPLING_SETTINGS, seed: bool = True):
    """--sampler, --sampling-steps, --guidance, ... for the `SamplerSettings` fields `names`; each defaults to the
    model's own (its recipe's [sample] table)."""
    group = p.add_argument_group("sampling")
    for name in names:
        help, reading = SAMPLING_OPTIONS[name]
        default = getattr(SamplerSettings(), name)
        otherwise = {"x0_clipping": "static for a pixel model, none for a latent one",
                     "spacing": "the sampler's own"}.get(name, default)
        group.add_argument("--" + name.replace("_", "-"), default=None, **reading,
                           help=f"{help} (default: the model's own, from its recipe; else {otherwise})")
    if seed:
        parameter_option(group, Generator.sample, "seed", "noise seed", type=at_least(0))
    p.set_defaults(sampling_options=tuple(names))


def sampling_settings(args) -> dict:
    """The `SamplerSettings` fields the command's sampling options set (those given)."""
    return {name: getattr(args, name) for name in args.sampling_options if getattr(args, name) is not None}


def add_autoencoder_option(p):
    """--autoencoder, for the commands that load a model to draw with."""
    p.add_argument("--autoencoder", metavar="FILE", help="a latent model's autoencoder, if it is no longer where it "
                   "was when the model trained (it must be the same file)")


# The settings each upscaler of a cascade draws with, as options of one value (every upscaler) or one per
# --upscaler: (the setting, help, how argparse reads a value).
CASCADE_OPTIONS = (
    ("sampler", "each upscaler's sampler (default: its own)", dict(choices=SAMPLERS)),
    ("sampling_steps", "each upscaler's sampling steps (default: its own)", dict(type=at_least(1))),
    ("guidance", "each upscaler's guidance (default: its own)", dict(type=float)),
    ("augmentation_level", "the noise level, 0 to 1, at which each upscaler sees the image it upscales (noise-"
     f"conditioning augmentation; default: {default_of(Generator.then, 'augmentation_level'):g})", dict(type=float)),
)


def _cascade_flag(name: str) -> str:
    return "--" + ("" if name == "augmentation_level" else "upscaler-") + name.replace("_", "-")


def add_cascade_options(p):
    """--upscaler (repeated: a cascade) and the settings its upscalers draw with."""
    cascade = p.add_argument_group("cascade")
    cascade.add_argument("--upscaler", action="append", default=[], metavar="CHECKPOINT",
                         help="follow the model with this upscaler (trained with model.upscale_from); repeat for "
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
