"""What the chapters share: their settings in each mode, and the model several of them use.

Every chapter runs in two modes. In smoke mode (`MINIDIFF_SMOKE=1`, what CI
runs) sizes and steps shrink so that a chapter runs in about a minute on a
CPU; in full mode it makes pictures worth looking at. A chapter states both
once, at its top:

    settings = chapter_settings(smoke=dict(steps=30, batch_size=16), full=dict(steps=1500, batch_size=64))

and its teaching cells read `settings.steps`, never the mode.

The models chapters train are recipes (`minidiff/recipes/*.toml`), whose
[smoke] tables hold what smoke mode changes: `chapter_recipe` reads one in the
chapter's mode. Chapter 02 trains the course's first caption-conditioned
model; chapters 03, 04 and 07 sample from it. `first_model()` loads what
chapter 02 saved (in this mode) and trains it the same way when chapter 02
has not run.
"""

import os
import types
from pathlib import Path

from minidiff.from_recipe import train_recipe
from minidiff.generator import Generator, load
from minidiff.machinery.checkpoints import Checkpoint
from minidiff.recipe import Recipe, load_recipe
from minidiff.training import KIND

SMOKE = os.environ.get("MINIDIFF_SMOKE") == "1"
MODE = "smoke" if SMOKE else "full"
# Where chapters keep what they train, per mode (relative to the chapters' folder, where they run).
RUNS = Path("runs") / MODE


def chapter_settings(*, smoke: dict, full: dict) -> types.SimpleNamespace:
    """A chapter's sizes in the mode it runs in; both modes must name the same settings."""
    if set(smoke) != set(full):
        raise ValueError(f"smoke and full settings differ in their names: {sorted(set(smoke) ^ set(full))}")
    return types.SimpleNamespace(**(smoke if SMOKE else full))


def chapter_recipe(name: str, overrides: dict | None = None, trains: str = "text-to-image"):
    """A named recipe (`minidiff.recipe`) of what it `trains`, in the mode the chapter runs in: its [smoke]
    table applied in smoke mode, then `overrides`, {"train.steps": 100, ...}, as `--set` gives them."""
    return load_recipe(name, overrides, smoke=SMOKE, trains=trains)


def _finished_run_of(path: Path, recipe: Recipe) -> bool:
    """Whether `path` holds a run of exactly this recipe, trained to its last step."""
    if not path.is_file():
        return False
    checkpoint = Checkpoint(path)
    (step,) = checkpoint.fields("step", kind=KIND)
    return step == recipe.train.steps and checkpoint.header.get("recipe") == recipe.to_dict()


# Chapter 02 trains the course's first model, `minidiff/recipes/first-model.toml`; chapters 03, 04 and 07
# sample from it.
FIRST_MODEL_RUN = RUNS / "first_model"


def first_model() -> Generator:
    """The first model: loaded from chapter 02's checkpoint when chapter 02 has run in this mode,
    else trained now, as chapter 02 trains it (and saved where chapter 02 saves it)."""
    recipe = chapter_recipe("first-model")
    path = FIRST_MODEL_RUN / "checkpoint.npz"
    if _finished_run_of(path, recipe):
        print(f"the first model, as chapter 02 trained it: {path}")
        return load(path)
    print("chapter 02 has not run in this mode: training its model now")
    return train_recipe(recipe, checkpoint=path).generator
