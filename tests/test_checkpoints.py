import json

import jax
import numpy as np
import pytest
from flax import nnx

from minidiff.machinery.atomic import atomic_write
from minidiff.machinery.checkpoints import Checkpoint, CheckpointError, save_checkpoint
from minidiff.model import create_model, preset


def test_round_trip_restores_every_parameter(tmp_path, model, model_config):
    path = save_checkpoint(tmp_path / "c.npz", {"note": "hello"}, model=model)
    fresh = create_model(model_config, seed=1)
    checkpoint = Checkpoint(path)
    assert checkpoint.header["note"] == "hello" and checkpoint.has("model") and not checkpoint.has("ema")
    checkpoint.restore("model", fresh)
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(fresh))):
        np.testing.assert_array_equal(a, b)


def test_missing_corrupt_and_mismatched_checkpoints_are_clear_errors(tmp_path, model):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        Checkpoint(tmp_path / "nothing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="not a readable minidiff checkpoint"):
        Checkpoint(tmp_path / "junk.npz")
    good = save_checkpoint(tmp_path / "good.npz", {}, model=model).read_bytes()
    (tmp_path / "cut.npz").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError):
        Checkpoint(tmp_path / "cut.npz").restore("model", model)
    other = create_model(preset("tiny", 99, image_size=16))  # a different vocabulary size
    with pytest.raises(CheckpointError, match="shape"):
        Checkpoint(tmp_path / "good.npz").restore("model", other)


def test_checkpoints_hold_no_pickles(tmp_path, model):
    path = save_checkpoint(tmp_path / "c.npz", {"a": 1}, model=model)
    with np.load(path, allow_pickle=False) as arrays:  # would raise on an object array
        for key in arrays.files:
            assert arrays[key].dtype != object


def test_atomic_write_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "file.bin"
    atomic_write(target, lambda f: f.write(b"old"))

    def failing(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_a_checkpoint_of_another_format_is_refused_with_what_to_do(tmp_path, model):
    """Every file records its format; an older one is refused in one line that says to train again, rather
    than read by a branch kept for it."""
    path = save_checkpoint(tmp_path / "c.npz", {}, model=model)
    with np.load(path, allow_pickle=False) as arrays:
        saved = {key: arrays[key] for key in arrays.files}
    header = json.loads(str(saved["header"])) | {"format_version": 1}
    np.savez(tmp_path / "old.npz", **(saved | {"header": np.array(json.dumps(header))}))
    with pytest.raises(CheckpointError, match="format 1; this minidiff reads format 2 only: train it again"):
        Checkpoint(tmp_path / "old.npz")
