"""What the chapters share: their settings per mode, and the first model, loaded or trained."""

import numpy as np
import pytest

from minidiff.course import chapters
from minidiff.recipe import load_recipe

TINY = {"model.preset": "tiny", "data.image_size": 16, "data.num_images": 32, "train.batch_size": 4}


def test_a_chapter_reads_the_settings_of_its_mode(monkeypatch):
    monkeypatch.setattr(chapters, "SMOKE", True)
    assert chapters.chapter_settings(smoke=dict(steps=3), full=dict(steps=300)).steps == 3
    monkeypatch.setattr(chapters, "SMOKE", False)
    assert chapters.chapter_settings(smoke=dict(steps=3), full=dict(steps=300)).steps == 300
    with pytest.raises(ValueError, match="batch_size"):
        chapters.chapter_settings(smoke=dict(steps=3), full=dict(steps=300, batch_size=64))


def test_a_chapter_reads_a_recipe_in_its_mode(monkeypatch):
    """The first model's recipe file has a [smoke] table: the tiny U-Net at 16 px, a few steps."""
    monkeypatch.setattr(chapters, "SMOKE", True)
    smoke = chapters.chapter_recipe("first-model")
    assert (smoke.model.preset, smoke.data.image_size, smoke.train.steps) == ("tiny", 16, 30)
    monkeypatch.setattr(chapters, "SMOKE", False)
    full = chapters.chapter_recipe("first-model", {"train.steps": 10})
    assert (full.model.preset, full.data.image_size, full.train.steps) == ("small", 32, 10)


def test_the_first_model_is_loaded_when_chapter_02_trained_it_and_trained_when_not(tmp_path, monkeypatch, capsys):
    steps = {"train.steps": 2}
    monkeypatch.setattr(chapters, "chapter_recipe", lambda name: load_recipe(name, TINY | steps))
    monkeypatch.setattr(chapters, "FIRST_MODEL_RUN", tmp_path / "first_model")
    captions = ["a red flower", "a blue bird"]

    trained = chapters.first_model()  # chapter 02 has not run: trained here, and saved where it saves it
    assert "training its model now" in capsys.readouterr().out
    assert (tmp_path / "first_model" / "checkpoint.npz").is_file()

    real_train = chapters.train_recipe
    monkeypatch.setattr(chapters, "train_recipe", lambda *args, **kwargs: pytest.fail("trained again"))
    loaded = chapters.first_model()
    assert "as chapter 02 trained it" in capsys.readouterr().out
    np.testing.assert_array_equal(loaded.sample(captions, sampling_steps=2), trained.sample(captions, sampling_steps=2))

    # A run of another recipe (here: fewer steps than asked now) is not taken for the first model.
    steps["train.steps"] = 3
    monkeypatch.setattr(chapters, "train_recipe", real_train)
    chapters.first_model()
    assert "training its model now" in capsys.readouterr().out
