"""Shared fixtures: a tiny dataset, tokenizer, model and training configuration; small trained runs of every
kind, made once per test session; and a persistent compilation cache."""

import contextlib
import io
import os
from collections.abc import Mapping
from pathlib import Path

import jax
import pytest
from filelock import FileLock

# The tests run a few steps of tiny models, so their time goes to compiling, not to running what was compiled:
# XLA:CPU compiles faster without LLVM's optimisations of the machine code (the same programs, computing the
# same values up to rounding; set here, before JAX starts its CPU backend).
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()

from minidiff.machinery.compilation import enable_compilation_cache  # noqa: E402
from minidiff.machinery.sharding import one_device_per_cpu_core  # noqa: E402

# Compiled programs are kept on disk between runs: a second test run skips most compilation. The processes the
# tests start (the command line, the four simulated devices) share the same folder. Only programs that took a
# second or more to compile are kept: reading a small one back costs about as much as compiling it again.
os.environ["JAX_COMPILATION_CACHE_DIR"] = str(Path(__file__).resolve().parent.parent / ".jax_cache")
enable_compilation_cache()
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
# The devices the command line sees (one per CPU core), whichever test a worker runs first.
one_device_per_cpu_core()

from minidiff.captions import Tokenizer  # noqa: E402
from minidiff.command.cli import main  # noqa: E402
from minidiff.datasets import toy_dataset  # noqa: E402
from minidiff.loop import TrainConfig  # noqa: E402
from minidiff.model import create_model, preset  # noqa: E402


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


# --- Small trained runs of every kind, through the command ------------------------------------

# Two steps of the tiny models on 32 images of the embedded set: what the command and the generator are
# tested on. Each is `minidiff train` (or train-autoencoder) as a user types it.
TINY = ["--steps", "2", "--quiet", "--set", "data.num_images=32", "train.batch_size=4"]
GRIDS = "sample.sampling_steps=2"  # each text-to-image run draws a grid at its end
RUNS = {
    "unet": ["train", "--recipe", "toy", *TINY, GRIDS, "model.preset=tiny", "data.image_size=16",
             "model.denoiser.attention_resolutions=[8,4]"],
    "dit": ["train", "--recipe", "demo", *TINY, GRIDS, "data.image_size=16"],
    "upscaler": ["train", "--recipe", "toy", *TINY, GRIDS, "model.preset=tiny", "data.image_size=32",
                 "model.upscale_from=16", "train.report_every=2"],
    "autoencoder": ["train-autoencoder", *TINY, "data.image_size=16"],
    "latent": ["train", "--recipe", "toy", *TINY, GRIDS, "model.preset=tiny", "data.image_size=16",
               "train.report_every=2", "model.autoencoder={autoencoder}/autoencoder.npz"],
}


# A run that needs another's file: the latent model, its autoencoder.
NEEDS = {"latent": "autoencoder"}


class TrainedRuns(Mapping):
    """The folders of the small runs of `RUNS`, each trained the first time a test asks for it, once per test
    session, and shared by the tests and by pytest's workers: the first worker to ask trains it (under a
    lock), the others wait and read it. Each folder holds what the command wrote, and printed.txt, what it
    printed. Tests read them; a test that changes a run copies it first."""

    def __init__(self, root: Path):
        self.root = root

    def __getitem__(self, name: str) -> Path:
        folder = self.root / name
        with FileLock(str(self.root / f"{name}.lock")):
            if not (folder / "done").is_file():
                if name in NEEDS:
                    self[NEEDS[name]]
                self._train(name, folder)
                (folder / "done").write_text("")
        return folder

    def _train(self, name: str, folder: Path) -> None:
        before = os.environ.get("MINIDIFF_CACHE_DIR")
        os.environ["MINIDIFF_CACHE_DIR"] = str(self.root / "cache")  # latents cached here, not in the user's cache
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                code = main([arg.format(autoencoder=self.root / "autoencoder") for arg in RUNS[name]]
                            + ["--out", str(folder)])
        finally:
            os.environ.pop("MINIDIFF_CACHE_DIR") if before is None else os.environ.update(MINIDIFF_CACHE_DIR=before)
        assert code == 0, (name, printed.getvalue())
        (folder / "printed.txt").write_text(printed.getvalue())

    def __iter__(self):
        return iter(RUNS)

    def __len__(self) -> int:
        return len(RUNS)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, worker_id) -> TrainedRuns:
    """Small runs of every kind (`RUNS`), trained when first asked for (`TrainedRuns`)."""
    root = tmp_path_factory.getbasetemp()
    return TrainedRuns(root.parent if worker_id != "master" else root)
