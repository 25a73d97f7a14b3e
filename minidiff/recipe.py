"""Recipes: every named setup is a small TOML file, read into the configs it fills.

    minidiff recipes                                         # the named ones, one line each
    minidiff train --recipe demo --minutes 1                 # one of them
    minidiff train --recipe demo --set model.backbone=unet process.kind=diffusion   # any field changed
    minidiff train --recipe my_recipe.toml                   # your own

A recipe of a text-to-image model has five tables, each the fields of one
config (as nanoGPT's `config/` files and big_vision's configs are), and a
description:

    [data]     DataSettings: which images, at what size
    [model]    ModelSettings: the preset, the backbone and text encoder, an autoencoder or a
               pretrained text encoder's file, an upscaler's input size, the caption dropout;
               [model.denoiser]: the backbone preset's own settings replaced
    [process]  kind = "diffusion" (`corruption.Diffusion`'s fields) or "flow" (`flows.StraightFlow`'s)
    [train]    `loop.TrainConfig`
    [sample]   `sampling.SamplerSettings`: what the run's sample grids and its checkpoint draw with

A recipe of an autoencoder (`trains = "autoencoder"`, for `minidiff
train-autoencoder`) has [data], [autoencoder] (AutoencoderSettings) and [train].

A field a recipe leaves out keeps its config's default. A field that does not
exist, or does not apply (a flow's `loss_weighting`, a DiT's
`attention_resolutions`, the embedded set's `num_images` for flowers), is an
error that names it, never ignored. A [smoke] table holds what the chapters'
smoke mode (MINIDIFF_SMOKE=1) changes, in the same tables.

`minidiff.from_recipe` turns a recipe into what a run needs (its dataset, its
tokenizer and its model's config) and trains it.
"""

import copy
import dataclasses
import tomllib
import types
import typing
from pathlib import Path

from minidiff.autoencoder import FACTORS, AutoencoderConfig, autoencoder_preset
from minidiff.datasets import DATASETS, TOY, CaptionedImages, load_dataset
from minidiff.datasets.splits import SPLITS as REAL_SPLITS
from minidiff.datasets.toy import SPLITS as TOY_SPLITS
from minidiff.loop import TrainConfig
from minidiff.model import BACKBONES, PRESETS, PROCESSES, Process
from minidiff.sampling import SamplerSettings
from minidiff.text_encoders import TEXT_ENCODERS

RECIPES = Path(__file__).resolve().parent / "recipes"


@dataclasses.dataclass(frozen=True)
class DataSettings:
    dataset: str = "toy"  # one of datasets.DATASETS
    # Of flowers and birds: one of datasets.splits.SPLITS; of the embedded set: of toy.SPLITS; a folder has
    # none (all its images). None: "train", or a folder's all.
    split: str | None = None
    image_size: int = 32
    num_images: int | None = None  # the embedded set's size (None: load_dataset's); for it alone
    seed: int | None = None  # the embedded set's seed (None: load_dataset's); for it alone

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"data.dataset must be one of {DATASETS}, got {self.dataset!r}")
        splits = TOY_SPLITS if self.dataset in TOY else (None,) if self.dataset == "folder" else REAL_SPLITS
        if self.split is not None and self.split not in splits:
            raise ValueError(f"data.split of {self.dataset} must be one of {splits}, got {self.split!r}"
                             if self.dataset != "folder" else "data.split: a folder has no splits, all its images "
                             "are used")
        if self.dataset not in TOY:
            given = [name for name in ("num_images", "seed") if getattr(self, name) is not None]
            if given:
                raise ValueError(f"data.{given[0]} is the embedded set's: {self.dataset} has its own images")
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"data.image_size must be a whole number of pixels, got {self.image_size!r}")

    def load(self, data_dir=None, use_cache: bool = True, download: bool = False) -> CaptionedImages:
        embedded = {name: getattr(self, name) for name in ("num_images", "seed") if getattr(self, name) is not None}
        return load_dataset(self.dataset, self.split or "train", image_size=self.image_size, data_dir=data_dir,
                            use_cache=use_cache, download=download, **embedded)


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    preset: str = "small"  # one of model.PRESETS
    backbone: str = "unet"  # one of model.BACKBONES
    # One of TEXT_ENCODERS, trained with the denoiser (None: a transformer, or the kind of text_encoder_file).
    text_encoder: str | None = None
    # A text encoder pretrained on text alone (`minidiff pretrain-text`'s file): the model reads captions with
    # it, frozen, and with its words.
    text_encoder_file: str = ""
    autoencoder: str = ""  # a latent model: the file of the autoencoder whose latents it diffuses
    upscale_from: int = 0  # an upscaler: the side of the low-resolution images it is shown
    caption_dropout: float = 0.1
    denoiser: dict = dataclasses.field(default_factory=dict)  # the backbone preset's settings replaced

    def __post_init__(self):
        for name, options in (("preset", PRESETS), ("backbone", tuple(BACKBONES)),
                              ("text_encoder", (None, *TEXT_ENCODERS))):
            if getattr(self, name) not in options:
                raise ValueError(f"model.{name} must be one of {options}, got {getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    data: DataSettings
    model: ModelSettings
    process: Process
    train: TrainConfig
    sample: SamplerSettings

    def to_dict(self) -> dict:
        """The recipe as a checkpoint records it; `Recipe.from_dict` reads it back."""
        return {"name": self.name, "description": self.description, "data": dataclasses.asdict(self.data),
                "model": dataclasses.asdict(self.model),
                "process": {"kind": self.process.kind, **dataclasses.asdict(self.process)},
                "train": dataclasses.asdict(self.train), "sample": dataclasses.asdict(self.sample)}

    @classmethod
    def from_dict(cls, saved: dict) -> "Recipe":
        saved = copy.deepcopy(saved)
        return _build(saved.pop("name"), saved.pop("description"), "text-to-image", saved)


@dataclasses.dataclass(frozen=True)
class AutoencoderSettings:
    factor: int = 4  # one of autoencoder.FACTORS: how many times smaller the latent is on each side
    latent_channels: int = 4
    kl_weight: float = 1e-6
    widths: tuple[int, ...] | None = None  # None: the factor's own (`autoencoder_preset`)

    def __post_init__(self):
        if self.factor not in FACTORS:
            raise ValueError(f"autoencoder.factor must be one of {FACTORS}, got {self.factor!r}")


@dataclasses.dataclass(frozen=True)
class AutoencoderRecipe:
    name: str
    description: str
    data: DataSettings
    autoencoder: AutoencoderSettings
    train: TrainConfig

    def model_config(self) -> AutoencoderConfig:
        settings = self.autoencoder
        widths = {"widths": settings.widths} if settings.widths is not None else {}
        return autoencoder_preset(settings.factor, self.data.image_size, latent_channels=settings.latent_channels,
                                  kl_weight=settings.kl_weight, **widths)

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "data": dataclasses.asdict(self.data),
                "autoencoder": dataclasses.asdict(self.autoencoder), "train": dataclasses.asdict(self.train)}

    @classmethod
    def from_dict(cls, saved: dict) -> "AutoencoderRecipe":
        saved = copy.deepcopy(saved)
        return _build(saved.pop("name"), saved.pop("description"), "autoencoder", saved)


# The tables of each kind of recipe file and the config each fills (the process's depends on its kind).
SECTIONS = {
    "text-to-image": {"data": DataSettings, "model": ModelSettings, "process": None, "train": TrainConfig,
                      "sample": SamplerSettings},
    "autoencoder": {"data": DataSettings, "autoencoder": AutoencoderSettings, "train": TrainConfig},
}


class RecipeError(ValueError):
    """A recipe that cannot be read: a missing file, a field that does not exist or does not apply."""


def recipe_names() -> list[str]:
    return sorted(path.stem for path in RECIPES.glob("*.toml"))


def recipe_path(name: str) -> Path:
    """The file of a named recipe (`minidiff/recipes/NAME.toml`), or a path to a .toml file of your own."""
    path = Path(name) if name.endswith(".toml") else RECIPES / f"{name}.toml"
    if not path.is_file():
        raise RecipeError(f"no recipe {name!r}: choose one of {', '.join(recipe_names())} (minidiff recipes lists "
                          "them), or give the path of a .toml file")
    return path


def what_it_trains(name: str) -> str:
    """What the recipe `name` trains: "text-to-image" or "autoencoder" (its `trains`)."""
    return tomllib.loads(recipe_path(name).read_text()).get("trains", "text-to-image")


def describe_recipes() -> list[str]:
    """One line per named recipe: its name, what it trains, and its description."""
    width = max(map(len, recipe_names()))
    descriptions = {name: tomllib.loads(recipe_path(name).read_text())["description"] for name in recipe_names()}
    return [f"{name:{width}s}  {what_it_trains(name):13s}  {description}" for name, description in descriptions.items()]


def parse_value(text: str):
    """A value as written after `--set FIELD=`: TOML (2e-3, [8, 4], true, "a b"), else the text itself
    (unet, flow)."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def load_recipe(name: str, overrides: dict | None = None, smoke: bool = False,
                trains: str = "text-to-image") -> Recipe | AutoencoderRecipe:
    """The recipe `name` (or a .toml path) of what `trains` (a text-to-image model, or an autoencoder), with
    its [smoke] table applied if `smoke`, then `overrides`:
    {"train.batch_size": 16, "model.denoiser.attention_resolutions": [8, 4], ...}."""
    path = recipe_path(name)
    try:
        tables = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(f"{path} is not valid TOML: {error}") from None
    description = tables.pop("description", "")
    smoke_tables = tables.pop("smoke", {})
    if tables.pop("trains", "text-to-image") not in SECTIONS:
        raise RecipeError(f"{path}: trains must be one of {tuple(SECTIONS)}")
    if what_it_trains(name) != trains:
        command = "minidiff train-autoencoder" if trains == "text-to-image" else "minidiff train"
        other = "an autoencoder" if trains == "text-to-image" else "a text-to-image model"
        raise RecipeError(f"the recipe {name} trains {other}: run it with {command}")
    sections = SECTIONS[trains]
    _check_tables(tables, sections, f"{path}")
    if smoke:
        _check_tables(smoke_tables, sections, f"{path}'s [smoke]")
        for section, fields in smoke_tables.items():
            for key, value in fields.items():
                _set(tables, sections, f"{section}.{key}", copy.deepcopy(value))
    for key, value in (overrides or {}).items():
        _set(tables, sections, key, value)
    return _build(Path(name).stem, description, trains, tables)


def _check_tables(tables: dict, sections: dict, where: str) -> None:
    unknown = set(tables) - set(sections)
    if unknown:
        raise RecipeError(f"{where} has no table [{sorted(unknown)[0]}]: this recipe's tables are "
                          f"{', '.join(f'[{s}]' for s in sections)}")


def _set(tables: dict, sections: dict, key: str, value) -> None:
    section, _, field = key.partition(".")
    if section not in sections or not field:
        raise RecipeError(f"{key!r} names no recipe field: give TABLE.FIELD, TABLE one of {', '.join(sections)} "
                          "(e.g. train.batch_size=16)")
    if section == "model" and field == "denoiser" and isinstance(value, dict):  # a [model.denoiser] table
        for key, item in value.items():
            _set(tables, sections, f"model.denoiser.{key}", item)
    elif section == "model" and field.startswith("denoiser."):
        tables.setdefault("model", {}).setdefault("denoiser", {})[field.removeprefix("denoiser.")] = value
    else:
        tables.setdefault(section, {})[field] = value


def _build(name: str, description: str, trains: str, tables: dict) -> Recipe | AutoencoderRecipe:
    sections = {section: config for section, config in SECTIONS[trains].items() if config is not None}
    built = {section: _config(config, tables.get(section, {}), section) for section, config in sections.items()}
    if trains == "autoencoder":
        return AutoencoderRecipe(name=name, description=description, **built)
    process = dict(tables.get("process", {}))
    kind = process.pop("kind", "diffusion")
    if kind not in PROCESSES:
        raise RecipeError(f"process.kind must be one of {tuple(PROCESSES)}, got {kind!r}")
    built["process"] = _config(PROCESSES[kind], process, "process", f"a {kind} process")
    return Recipe(name=name, description=description, **built)


def config_fields(config_class, fields: dict, section: str) -> dict:
    """`fields` of the dataclass `config_class`, each value checked against (and made) its field's type:
    a whole number where a float is asked, a tuple where a list is given."""
    hints = typing.get_type_hints(config_class)
    return {name: _typed(value, hints[name], f"{section}.{name}") for name, value in fields.items()}


def _config(config_class, fields: dict, section: str, what: str | None = None):
    """`config_class(**fields)`, each value checked against its field's type; a clear error otherwise.
    `what` names the config where a table's fields depend on its kind (the process's)."""
    known = [f.name for f in dataclasses.fields(config_class)]
    for name in fields:
        if name not in known:
            has = f"{what} has" if what else f"[{section}] has"
            raise RecipeError(f"{section}.{name} is not a setting {'of ' + what if what else 'here'}; {has} "
                              f"{', '.join(['kind'] * bool(what) + known)}")
    values = config_fields(config_class, fields, section)
    try:
        return config_class(**values)
    except ValueError as error:
        raise RecipeError(f"[{section}]: {error}") from None


def _typed(value, hint, where: str):
    """`value` as the type `hint` wants: a whole number where a float is asked, a list where a tuple."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        origin = typing.get_origin(option) or option
        if value is None and option is type(None):
            return None
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is tuple and isinstance(value, list):
            return tuple(value)
        if isinstance(origin, type) and isinstance(value, origin) and not (origin is int and isinstance(value, bool)):
            return value
    raise RecipeError(f"{where} must be {' or '.join(getattr(o, '__name__', str(o)) for o in options)}, "
                      f"got {value!r}")

