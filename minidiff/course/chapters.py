"""What the chapters share: their settings in each mode, and the model several of them use.

Every chapter runs in two modes. In smoke mode (`MINIDIFF_SMOKE=1`, what CI
runs) sizes and steps shrink so that a chapter runs in about a minute on a
CPU; in full mode it makes pictures worth looking at. A chapter states both
once, at its top:

    settings = chapter_settings(smoke=dict(steps=30, batch_size=16), full=dict(steps=1500, batch_size=64))

and its teaching cells read `settings.steps`, never the mode.

Chapter 02 trains the course's first caption-conditioned model; chapters 03,
04 and 07 sample from it. `first_model()` loads what chapter 02 saved (in this
mode) and trains it the same way when chapter 02 has not run.
"""

import os
import types
from pathlib import Path

from minidiff.captions import Tokenizer
from minidiff.datasets import CaptionedImages, toy_dataset
from minidiff.generator import Generator, load
from minidiff.machinery.checkpoints import Checkpoint
from minidiff.model import ModelConfig, preset
from minidiff.training import TrainConfig, new_train_state, train

SMOKE = os.environ.get("MINIDIFF_SMOKE") == "1"
MODE = "smoke" if SMOKE else "full"
# Where chapters keep what they train, per mode (relative to the chapters' folder, where they run).
RUNS = Path("runs") / MODE


def chapter_settings(*, smoke: dict, full: dict) -> types.SimpleNamespace:
    """A chapter's sizes in the mode it runs in; both modes must name the same settings."""
    if set(smoke) != set(full):
        raise ValueError(f"smoke and full settings differ in their names: {sorted(set(smoke) ^ set(full))}")
    return types.SimpleNamespace(**(smoke if SMOKE else full))


# The course's first model: the small U-Net on the embedded flowers and birds (in smoke mode the
# tiny one, for a few steps: its images are blobs, and only show that the machinery runs).
FIRST_MODEL = chapter_settings(
    smoke=dict(image_size=16, num_images=256, preset="tiny", steps=30, batch_size=16),
    full=dict(image_size=32, num_images=8000, preset="small", steps=1500, batch_size=64),
)
FIRST_MODEL_RUN = RUNS / "first_model"


def first_model_recipe() -> tuple[CaptionedImages, Tokenizer, ModelConfig, TrainConfig]:
    """The data, tokenizer, model and training settings of the first model (chapter 02 trains it)."""
    s = FIRST_MODEL
    dataset = toy_dataset(num_images=s.num_images, image_size=s.image_size)
    tokenizer = Tokenizer.from_captions(dataset.all_captions())
    model_config = preset(s.preset, tokenizer.vocab_size, image_size=s.image_size, max_length=tokenizer.max_length)
    return dataset, tokenizer, model_config, TrainConfig(steps=s.steps, batch_size=s.batch_size, log_every=10)


def _finished_run_of(path: Path, tokenizer: Tokenizer, model_config: ModelConfig, config: TrainConfig) -> bool:
    """Whether `path` holds a run of exactly this recipe, trained to its last step."""
    if not path.is_file():
        return False
    step, saved_model, saved_tokenizer, saved_config = Checkpoint(path).fields(
        "step", "model_config", "tokenizer", "train_config", kind="training run")
    return (step == config.steps and ModelConfig.from_dict(saved_model) == model_config
            and Tokenizer.from_dict(saved_tokenizer) == tokenizer and TrainConfig.from_dict(saved_config) == config)


def first_model() -> Generator:
    """The first model: loaded from chapter 02's checkpoint when chapter 02 has run in this mode,
    else trained now, as chapter 02 trains it (and saved where chapter 02 saves it)."""
    dataset, tokenizer, model_config, config = first_model_recipe()
    path = FIRST_MODEL_RUN / "checkpoint.npz"
    if _finished_run_of(path, tokenizer, model_config, config):
        print(f"the first model, as chapter 02 trained it: {path}")
        return load(path)
    print("chapter 02 has not run in this mode: training its model now")
    state = train(new_train_state(model_config, tokenizer, config), dataset, out_dir=FIRST_MODEL_RUN)
    return Generator.from_training(state)
