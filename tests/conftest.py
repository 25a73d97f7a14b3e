"""Shared fixtures: a tiny dataset, tokenizer, model and training configuration, and a persistent
compilation cache."""

from pathlib import Path

import pytest

from minidiff.machinery.compilation import enable_compilation_cache
from minidiff.machinery.sharding import one_device_per_cpu_core

# Compiled programs are kept on disk between runs: a second test run skips most compilation.
enable_compilation_cache(Path(__file__).resolve().parent.parent / ".jax_cache")
# The devices the command line sees (one per CPU core), whichever test a worker runs first.
one_device_per_cpu_core()

from minidiff.captions import Tokenizer  # noqa: E402
from minidiff.datasets import toy_dataset  # noqa: E402
from minidiff.model import create_model, preset  # noqa: E402
from minidiff.loop import TrainConfig  # noqa: E402


@pytest.fixture(scope="session")
def train_config():
    """One training configuration for every test that trains, so that its step compiles once."""
    return TrainConfig(steps=6, batch_size=8, learning_rate=3e-3, warmup=0.3, log_every=1, checkpoint_every=3,
                       report_every=3)


@pytest.fixture(scope="session")
def dataset():
    return toy_dataset(num_images=64, image_size=16, seed=0)


@pytest.fixture(scope="session")
def tokenizer(dataset):
    return Tokenizer.from_captions(dataset.all_captions(), max_length=24)


@pytest.fixture(scope="session")
def model_config(tokenizer):
    return preset("tiny", tokenizer.vocab_size, image_size=16, max_length=tokenizer.max_length)


@pytest.fixture()
def model(model_config):
    return create_model(model_config, seed=0)
